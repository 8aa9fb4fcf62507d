-- The three databases of the stack (infra/compose.yaml mounts this into the postgres image's init folder;
-- infra/stack.py creates the same ones on an existing server).
CREATE DATABASE instill_catalog;
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
