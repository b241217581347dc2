"""The training layer: the loop (loop), the recipe's arithmetic (recipe), parallelism, compile
and autocast (parallel) and the run's logs (logs)."""
