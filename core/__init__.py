"""The bottom layer: the suite's exception tree (errors.py), YAML reading that keeps line numbers
(yamlio.py) and typed fields built from YAML (fields.py). It imports nothing else of the project,
so probes, fixtures, reports and the pytest plugin can all stand on it."""
