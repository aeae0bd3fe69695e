"""Meta-training: the state pytree (state.py), the jitted step and epoch (step.py), the fit
loop with early stopping, the NaN guard, checkpoints and resume (loop.py)."""
