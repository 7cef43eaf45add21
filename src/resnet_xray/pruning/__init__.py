"""Iterative structured channel pruning: importance -> prune -> fine-tune -> repeat, with channels really removed.

Torch-Pruning's DepGraph keeps residual-coupled channels together; a pruned model is
saved as a width spec plus a state_dict, so ``load_model`` rebuilds it anywhere. The loop
is :mod:`.loop`, the criteria :mod:`.importance`, the surgery :mod:`.structured`, the
width spec :mod:`.spec`. Nothing is imported here: loading a pruned checkpoint needs
:mod:`.spec` alone, not Torch-Pruning or matplotlib.
"""
