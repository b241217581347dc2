"""The data layer: documents (sources) -> tokens (tokeniser, bpe) -> shards (prepare, shards) ->
batches (loader). Only the loader imports torch."""
