"""The commands (the roof), which run the pipeline. Only here are the stages put together (predict = extract's decode and
encoders + train's model); each subcommand imports its stage inside its function, so `train-fusion`
never loads NeMo or SigLIP2."""
