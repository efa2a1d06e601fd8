"""HL7 v2 tokenizer, ACK and v2-to-FHIR mapping tests."""
