"""HL7 v2 over MLLP (Minimal Lower Layer Protocol)."""
