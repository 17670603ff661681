"""Recipe schema (pydantic), YAML loading and dotted command-line overrides."""
