"""Sources: receive, persist to Kafka, and only then acknowledge the sender."""
