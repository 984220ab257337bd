"""Operations: config (params.yaml, validated), tracking (MLflow runs), registry (registered adapters and
promotion), atomic (every artifact written whole or not at all), digest (file hashes)."""
