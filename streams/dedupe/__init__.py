"""The dedupe stage: drop exact and content duplicates within a window."""
