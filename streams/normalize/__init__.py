"""The normalize stage: source formats to canonical FHIR R4 events."""
