"""The suite layer: schema, loading with line numbers, expansion into cells."""
