"""The normalize stage: raw HL7 v2 / FHIR bytes -> canonical ClinicalEvent (FHIR R4 inside)."""
