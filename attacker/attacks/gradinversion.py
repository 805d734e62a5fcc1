"""GradInversion-style attack (Yin et al. 2021), the paper's strongest: Inverting Gradients
plus a BatchNorm statistics prior whose targets come from the knowledge settings
(exact: the private batch's own; inferred: the model's running statistics; none: no prior)."""

from attacker.attacks.inverting_gradients import InvertingGradients


class GradInversion(InvertingGradients):
    name = "gradinversion"
    uses_bn_prior = True
