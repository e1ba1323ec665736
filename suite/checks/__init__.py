"""The built-in probe families, one module each (suite/families.py finds every module here that
defines FAMILY); common.py holds what the KD-set families share."""
