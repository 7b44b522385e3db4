"""Driver side of cueaudit: config, dataset readers, the Ray plan, the Parquet schema, analysis, gate, CLI."""
