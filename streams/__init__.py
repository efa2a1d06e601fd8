"""The thinking: Faust agents (thin shells) around pure stage logic."""
