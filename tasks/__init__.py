"""The pipeline as plain functions: a module per refresh step, the operations beside them, a shared layer."""
