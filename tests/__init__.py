"""The test suite; its folders mirror the code (tests/tasks, tests/flows; hypernet tests at the top)."""
