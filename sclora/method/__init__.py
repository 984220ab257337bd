"""The method: SC-LoRA and every method it is compared with.

table (one row per method) -> gather (`capture`: token-summed layer inputs) -> subspace (solve M(beta)) ->
inits (`apply_method`: every row's init) -> export (a plain LoRA on the original base). corda and lora_null are
the data steps of the inits written here; forecast reads the trade-off per beta from a capture alone.
"""
