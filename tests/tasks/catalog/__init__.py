"""Tests of tasks.catalog/."""
