"""The top floor: the evaluator (the only code that may re-derive a client's private
batch), orchestration (Flower's simulation engine on Ray, attack runs) and the command line.

It imports everything below it (`clients`, `server`, `attacker`, the `fedsim` base);
nothing below imports it.
"""
