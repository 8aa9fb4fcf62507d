"""Tests of tasks.sources/."""
