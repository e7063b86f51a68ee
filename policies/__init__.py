"""Step three of the data flow: identity-aware guardrail policies turn an Inspection into a Decision."""
