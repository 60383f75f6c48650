"""The optimizer of every stage, the runtime's (runtime/parallel/parallelize.py make_optimizer) and the exports'.

AdamW with these betas and ε; decoupled weight decay on matrices only, not on LayerNorms, biases or the
embedding (GPT-3; Megatron's GPT leaves biases and norms undecayed); the gradients' global norm clipped;
no dropout. No imports: the profiler's path (runtime/model/decoder.py) reads it on the bare GPU image.
"""

ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
WEIGHT_DECAY = 0.1
MAX_GRAD_NORM = 1.0
DROPOUT = 0.0
