"""The training layer: `loop.train(cfg)` runs a TrainConfig and returns a TrainResult.

loop.py      the loop, top to bottom: build the run, step, evaluate, save (it only sequences)
recipe.py    the recipe's arithmetic: accumulation, run length, learning-rate schedules, optimizer
batch.py     --batch-size auto: the largest micro-batch that fits the device, chosen at the start
optimizers.py  Muon for the blocks' matrices + AdamW for the rest, stepping as one optimizer
parallel.py  the only place that knows DDP, FSDP2, torch.compile and autocast
inputs.py    what a run reads: the data's loaders, the model's shape, HellaSwag's examples
logs.py      metrics.jsonl and log.txt, written (with console, TensorBoard, W&B) and read back
mfu.py       model FLOPs utilisation: GPU peaks, CPU matmul measurement
state.py     what a checkpoint holds besides the weights, from components' state_dict()s
rundir.py    a run's checkpoints folder, its best link, pruning, and where a run resumes
"""
