"""A Hydra launcher that runs a sweep's jobs on every core, in workers forked after the imports.

Selected by `hydra/launcher=backprop_lab` (conf/hydra/launcher/backprop_lab.yaml; the plugin's own
node: `backprop_lab_fork`); see launcher.py.
Hydra imports every module of this package in every process at start-up (plugin discovery):
they import only the standard library and Hydra.
"""
