"""One typed settings object: the knowledge-base file (``instill.yaml``) plus environment overrides.

``Settings`` holds where state lives (``INSTILL_HOME``, default ``.instill/``), the catalog and MLflow URIs
(embedded SQLite under the home by default) and the knowledge base read from the YAML file: its sources,
the generator, the QA gates and the promotion policy. Relative paths inside the YAML file are resolved
against the file's own folder, so a config works from any working directory.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.sources.base import redact

DEFAULT_CONFIG = Path("instill.yaml")
DEFAULT_BASE_MODEL = "smollm2-135m-instruct"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # safe in MLflow model names and file names


class DocumentKind(StrEnum):
    """What a document is to the knowledge base, hence which generator and gate its adapter gets.

    ``knowledge``: facts, through the configured generator and the knowledge gates. ``instruction``: a
    description of behaviour (front matter ``instill: {kind: instruction}``, or every document of a source
    with ``content: instruction``), through the Text-to-LoRA generator and the instruction gate; serving
    applies the production instruction adapter on top of whatever knowledge adapters answer."""

    KNOWLEDGE = "knowledge"
    INSTRUCTION = "instruction"


INSTRUCTION_GENERATOR = "t2l"  # the generator every instruction document goes through
KIND_TAG = "kind"  # registry version tag holding the adapter's DocumentKind


class ConfigError(ValueError):
    """The knowledge-base config is unusable; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _SourceBase(_Strict):
    # `instruction`: every document of the source is an instruction (a document's own front matter can
    # also declare it). Not `kind`, which already names the connector.
    content: DocumentKind = DocumentKind.KNOWLEDGE


class LocalSourceConfig(_SourceBase):
    kind: Literal["local"]
    name: str = Field(pattern=NAME_PATTERN)
    path: Path
    include: list[str] | None = None
    # Larger documents are refused, per document, before they are parsed or tokenised.
    max_bytes: int = Field(default=50 * 2**20, gt=0)

    @property
    def uri(self) -> str:
        """Where the source reads from, for the catalog."""
        return self.path.as_uri()


class GitSourceConfig(_SourceBase):
    kind: Literal["git"]
    name: str = Field(pattern=NAME_PATTERN)
    url: str
    branch: str = "main"
    subdir: str = ""
    include: list[str] | None = None
    # Larger documents are refused, per document, before they are parsed or tokenised.
    max_bytes: int = Field(default=50 * 2**20, gt=0)

    @property
    def uri(self) -> str:
        """Where the source reads from, for the catalog (never with credentials)."""
        return redact(self.url)


ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class S3SourceConfig(_SourceBase):
    """Objects under ``prefix`` of ``bucket``. Secrets are never in the file: the two ``*_env`` keys name
    environment variables holding the key pair; without them boto3's usual credential chain applies."""

    kind: Literal["s3"]
    name: str = Field(pattern=NAME_PATTERN)
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = ""
    include: list[str] | None = None
    endpoint_url: str | None = None  # an S3-compatible server; None for AWS
    region: str | None = None
    access_key_id_env: str | None = Field(default=None, pattern=ENV_NAME_PATTERN)
    secret_access_key_env: str | None = Field(default=None, pattern=ENV_NAME_PATTERN)
    max_bytes: int = Field(default=50 * 2**20, gt=0)  # larger objects are refused, per document
    page_size: int = Field(default=1000, ge=1, le=1000)
    retries: int = Field(default=4, ge=0)

    @property
    def uri(self) -> str:
        """Where the source reads from, for the catalog (never with credentials)."""
        if self.endpoint_url:
            return f"{redact(self.endpoint_url).rstrip('/')}/{self.bucket}/{self.prefix}"
        return f"s3://{self.bucket}/{self.prefix}"

    @model_validator(mode="after")
    def _key_pair(self) -> S3SourceConfig:
        if (self.access_key_id_env is None) != (self.secret_access_key_env is None):
            raise ValueError("access_key_id_env and secret_access_key_env go together")
        return self


class MediaWikiSourceConfig(_SourceBase):
    """Pages of ``namespaces`` of the wiki at ``api_url`` (its api.php). ``username`` is a bot-password
    login (``User@app``); ``password_env`` names the environment variable holding the bot password."""

    kind: Literal["mediawiki"]
    name: str = Field(pattern=NAME_PATTERN)
    api_url: str = Field(pattern=r"^https?://")
    username: str | None = None
    password_env: str | None = Field(default=None, pattern=ENV_NAME_PATTERN)
    namespaces: list[int] = Field(default_factory=lambda: [0], min_length=1)
    # Larger documents are refused, per document, before they are parsed or tokenised.
    max_bytes: int = Field(default=50 * 2**20, gt=0)
    maxlag: int = 5  # seconds of replication lag at which the wiki asks bots to wait
    retries: int = Field(default=4, ge=0)
    backoff_s: float = Field(default=1.0, ge=0)  # first retry delay; doubles, capped by max_backoff_s
    max_backoff_s: float = Field(default=30.0, ge=0)
    rc_max_age_days: float = Field(default=90.0, gt=1)  # the wiki's $wgRCMaxAge

    @property
    def uri(self) -> str:
        """Where the source reads from, for the catalog (never with credentials)."""
        return redact(self.api_url)

    @model_validator(mode="after")
    def _login_pair(self) -> MediaWikiSourceConfig:
        if (self.username is None) != (self.password_env is None):
            raise ValueError("username and password_env go together")
        return self


SourceConfig = Annotated[
    LocalSourceConfig | GitSourceConfig | S3SourceConfig | MediaWikiSourceConfig, Field(discriminator="kind")
]


class GeneratorConfig(_Strict):
    # The default is the fastest generator that passed the QA gates on >= 90% of held-out real documents
    # (docs/eval-memory.md: 24 of 24): the shipped hypernetwork's adapter plus the document's memory, one
    # read of the document, no training. A base model without a shipped hypernetwork checkpoint needs
    # `name: cd` or `memory` (the error says so).
    name: Literal["cd", "hypernet", "hypernet+cd", "memory", "t2l"] = "hypernet"
    base_model: str = DEFAULT_BASE_MODEL
    # Generator-specific knobs (steps, lr, rank, checkpoint, ...), passed to hypernet's factory as is.
    options: dict[str, Any] = Field(default_factory=dict)


class PromotionConfig(_Strict):
    # Move the `production` alias as soon as an adapter is registered (after its gates pass).
    auto_promote: bool = True


class GatesConfig(_Strict):
    """QA gates every new adapter must pass before it gets an alias (see ``tasks.qa``)."""

    # False: adapters are registered without being measured (not recommended).
    enabled: bool = True
    # Automatic probes drawn from the document's sentences, on top of its NAME.qa.yaml probes.
    auto_probes: int = Field(default=8, ge=0, le=64)
    # Knowledge: the adapter must close at least this fraction of the answer-NLL gap between the base
    # model without the document and the base model with the document in context. CD on SmolLM2 closes
    # 0.43-0.68 of it on the example documents (30 steps), a zero adapter 0.
    min_gap_closed: float = Field(default=0.3, le=1)
    # Specificity: the adapter's NLL improvement on its own probes must exceed its improvement on
    # another document's probes by at least this many nats per token (CD on SmolLM2: 1.2-2.7).
    min_specificity: float = Field(default=0.2, ge=0)
    # Preservation: NLL on the general-text set may rise by at most this fraction of the base's NLL.
    # Default CD on SmolLM2 raises it by 0.07 (150-word documents) to 0.14 (a 70-word one); CD at lr 1e-2
    # on that short document by 0.30, a random adapter by far more.
    max_preservation_increase: float = Field(default=0.2, ge=0)
    # Regression: on probes whose answers did not change, the new adapter's mean NLL may exceed the
    # previous adapter's by at most this many nats per token (two CD runs on revisions differing in one
    # sentence: 0.02 apart at the default lr, 0.16 at lr 1e-2; a forgetful adapter: about 2).
    regression_tolerance: float = Field(default=0.2, ge=0)
    # The document is cut to its first N words for the in-context measure and the automatic probes
    # (CD distils the first 1024 tokens by default, about 700 English words).
    max_context_words: int = Field(default=700, ge=16)
    # Tokens of the general-text set read for preservation: bounds its cost per adapter.
    preservation_tokens: int = Field(default=512, ge=64)
    # Recorded with every metric; bump it when probes, metrics or the general-text set change.
    suite_version: str = Field(default="1", min_length=1, max_length=32)


class InstructionGateSettings(_Strict):
    """The instruction gate (``tasks.instruction``): no facts to probe, so preservation plus compliance
    with the matched task-suite behaviour, or for an unmatched instruction a change of the answers."""

    max_nll_increase: float = Field(default=0.3, ge=0)  # nats of general-text NLL the adapter may add
    min_compliance: float = Field(default=0.5, ge=0, le=1)
    min_effect: float = Field(default=0.25, ge=0, le=1)
    inputs: int = Field(default=8, ge=1, le=64)  # generated inputs answered with and without the adapter
    max_new_tokens: int = Field(default=40, ge=1, le=512)


class InstructionsConfig(_Strict):
    """Instruction documents: the Text-to-LoRA generator's options (``checkpoint``: a T2L folder; default
    the checkpoint shipped for the base model) and their gate (run when ``gates.enabled``)."""

    options: dict[str, Any] = Field(default_factory=dict)
    gate: InstructionGateSettings = Field(default_factory=InstructionGateSettings)

    def generator(self, base_model: str) -> GeneratorConfig:
        """The generator config every instruction document of the knowledge base goes through."""
        return GeneratorConfig(name=INSTRUCTION_GENERATOR, base_model=base_model, options=dict(self.options))


class ServingConfig(_Strict):
    """How `instill ask` and `instill serve` answer (see tasks.answer, tasks.route, docs/eval-kb.md)."""

    # top1: the best-routed document's adapter; cat / linear: the top-k adapters combined as PEFT's
    # add_weighted_adapter does; rag: the top-k documents' text in the prompt, no adapter; rag+cat: both.
    # The default is the strategy measured best by `instill eval-kb` (docs/eval-kb.md).
    strategy: Literal["top1", "cat", "linear", "rag", "rag+cat"] = "rag"
    router: Literal["bm25", "embedding"] = "bm25"
    top_k: int = Field(default=2, ge=1, le=16)
    # Seconds between checks of the registry's aliases (a webhook call makes the next request check).
    poll_seconds: float = Field(default=2.0, ge=0)
    max_input_tokens: int = Field(default=1536, ge=16)  # the messages' tokens; more is refused
    max_new_tokens: int = Field(default=128, ge=1, le=4096)
    rag_max_words: int = Field(default=300, ge=16)  # per document put in the prompt
    # HMAC secret of the MLflow registry webhook (an environment variable's name, never the secret).
    webhook_secret_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # Where the MLflow tracking server reaches this server's receiver (``http://HOST:PORT/hooks/mlflow``):
    # set, `instill serve` registers the webhook ``instill-<kb>`` there at start (tasks.webhook). Needs
    # MLFLOW_TRACKING_URI to be a tracking server (http[s]://) and webhook_secret_env.
    webhook_url: str | None = Field(default=None, pattern=r"^https?://\S+$")
    # Apply the production instruction adapter (if any) with the knowledge adapters of every answer.
    apply_instruction: bool = True
    # Its update's scale when applied (1: as generated). Below 1 trades instruction compliance for the
    # knowledge adapters' effect; `instill eval-t2l-combined --set 'instruction_scales=[...]'` measures it.
    instruction_scale: float = Field(default=1.0, gt=0, le=4)


class ExecutionConfig(_Strict):
    """Where adapters are generated. Without ``pool`` (the default) every step runs in the refreshing
    process (embedded). With ``pool``, the refresh submits the pending versions in batches of
    ``batch_size`` as flow runs of the ``deployment`` on that Prefect work pool and waits for them
    (distributed: needs a Prefect server, a shared catalog and a store the workers share)."""

    pool: str | None = Field(default=None, pattern=NAME_PATTERN)
    batch_size: int = Field(default=16, ge=1, le=1024)
    # "<flow name>/<deployment name>" of the worker flow (flows/generate_adapters.py, infra/prefect.yaml).
    deployment: str = Field(default="generate-adapters/gpu", pattern=r"^[^/]+/[^/]+$")
    # How long the refresh waits for its batches before it reports them unfinished (the next refresh
    # picks their versions up), and how often it asks the Prefect server.
    timeout_s: float = Field(default=6 * 3600, gt=0)
    poll_s: float = Field(default=2.0, gt=0)

    @property
    def distributed(self) -> bool:
        return self.pool is not None


class LocalStoreConfig(_Strict):
    """Adapters and document texts in a folder under INSTILL_HOME (``store/``): the embedded default."""

    kind: Literal["local"] = "local"


class S3StoreConfig(_Strict):
    """Adapters and document texts under ``prefix`` of ``bucket`` on any S3 endpoint (``tasks.store_s3``), so
    that workers on other machines share them. Secrets are never in the file: the two ``*_env`` keys name
    the environment variables holding the key pair; without them boto3's usual credential chain applies."""

    kind: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63)
    # Key prefix without a leading or trailing "/" ("" for the bucket's top level).
    prefix: str = Field(default="", pattern=r"^$|^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
    endpoint_url: str | None = None  # an S3-compatible server; None for AWS
    region: str | None = None
    access_key_id_env: str | None = Field(default=None, pattern=ENV_NAME_PATTERN)
    secret_access_key_env: str | None = Field(default=None, pattern=ENV_NAME_PATTERN)
    retries: int = Field(default=4, ge=0)
    # Downloaded folders (adapters) are kept here; default: INSTILL_HOME/store-cache/<bucket>/<prefix>.
    cache_dir: Path | None = None

    @property
    def uri(self) -> str:
        """Where the store lives (never with credentials)."""
        where = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{where} at {redact(self.endpoint_url)}" if self.endpoint_url else where

    @model_validator(mode="after")
    def _key_pair(self) -> S3StoreConfig:
        if (self.access_key_id_env is None) != (self.secret_access_key_env is None):
            raise ValueError("access_key_id_env and secret_access_key_env go together")
        return self


StoreConfig = Annotated[LocalStoreConfig | S3StoreConfig, Field(discriminator="kind")]


class KnowledgeBase(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    sources: list[SourceConfig] = Field(min_length=1)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    instructions: InstructionsConfig = Field(default_factory=InstructionsConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    store: StoreConfig = Field(default_factory=LocalStoreConfig)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique, repeated: {', '.join(dupes)}")
        return sources


class Settings(BaseSettings):
    """Process-wide settings; every field can be overridden by an ``INSTILL_*`` environment variable."""

    model_config = SettingsConfigDict(env_prefix="INSTILL_", extra="ignore")

    home: Path = Path(".instill")
    config: Path = DEFAULT_CONFIG
    catalog_url: str | None = None
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "INSTILL_MLFLOW_TRACKING_URI")
    )
    model_cache: Path | None = None
    device: str | None = None  # None: CUDA when present, else CPU
    # torch CPU threads. One by default: on these 2-core machines a 2-thread step stalls badly whenever
    # another process holds a core (CD on SmolLM2: 70 s/document with 1 thread, ~300 s with 2, measured side
    # by side under the same load); 0 leaves torch's own default.
    threads: int = 1
    # How long a refresh waits for another refresh of the same knowledge base before it gives up (exit 3).
    lock_wait_s: float = Field(default=10.0, ge=0)

    @property
    def catalog(self) -> str:
        return self.catalog_url or f"sqlite:///{self.home.resolve() / 'catalog.db'}"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home.resolve() / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.home.resolve() / "mlartifacts"

    @property
    def store_root(self) -> Path:
        return self.home.resolve() / "store"

    @property
    def models_dir(self) -> Path:
        return (self.model_cache or self.home / "models").resolve()

    @property
    def git_dir(self) -> Path:
        return self.home.resolve() / "git"


def check_home(home: Path) -> None:
    """The state folder exists (created if needed) and is writable, else one ``HomeUnusable`` line."""
    from tasks.errors import HomeUnusable

    try:
        home.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise HomeUnusable(f"INSTILL_HOME {home}: a file is in the way (it must be a folder)") from None
    except OSError as exc:
        raise HomeUnusable(f"INSTILL_HOME {home}: cannot create it: {exc.strerror or exc}") from None
    if not home.is_dir():
        raise HomeUnusable(f"INSTILL_HOME {home}: not a folder")
    if not os.access(home, os.W_OK | os.X_OK):
        raise HomeUnusable(f"INSTILL_HOME {home}: not writable (instill keeps its catalog and models there)")


def load_knowledge_base(path: Path) -> KnowledgeBase:
    """Read and validate ``instill.yaml``; any problem becomes one ``ConfigError`` naming the key."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        kb = KnowledgeBase.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_problem(exc)}") from None
    return _resolve_paths(kb, path.resolve().parent)


def _first_problem(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        # Discriminated unions add the tag ("local") to the location: drop it, keep the user's keys.
        loc = ".".join(str(p) for p in err["loc"] if p not in ("local", "git", "s3", "mediawiki"))
        problems.append(f"{loc or '(top level)'}: {err['msg']}")
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more


def _resolve_paths(kb: KnowledgeBase, base: Path) -> KnowledgeBase:
    for source in kb.sources:
        if isinstance(source, LocalSourceConfig) and not source.path.is_absolute():
            source.path = (base / source.path).resolve()
        if isinstance(source, GitSourceConfig) and "://" not in source.url:
            local = Path(source.url)
            if not local.is_absolute() and (base / local).exists():
                source.url = str((base / local).resolve())
    checkpoint = kb.instructions.options.get("checkpoint")
    if isinstance(checkpoint, str) and not Path(checkpoint).is_absolute() and (base / checkpoint).exists():
        kb.instructions.options["checkpoint"] = str((base / checkpoint).resolve())
    if isinstance(kb.store, S3StoreConfig) and kb.store.cache_dir and not kb.store.cache_dir.is_absolute():
        kb.store.cache_dir = (base / kb.store.cache_dir).resolve()
    return kb


# Variables that keep every run offline and quiet; set before Prefect, MLflow or unstructured import.
RUNTIME_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "SCARF_NO_ANALYTICS": "1",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # A bounded budget for every MLflow HTTP call (MLflow's own defaults retry for minutes): with the
    # registry down a refresh fails within a minute and the next one registers what this one recorded.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}


def apply_runtime_env(home: Path) -> None:
    """Offline, telemetry-free defaults; an explicit environment variable always wins.

    Raises ``HomeUnusable`` (one line) when the home cannot be created or written."""
    for key, value in RUNTIME_ENV.items():
        os.environ.setdefault(key, value)
    check_home(home)
    prefect_home = (home / "prefect").resolve()
    prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last level itself
    os.environ.setdefault("PREFECT_HOME", str(prefect_home))
