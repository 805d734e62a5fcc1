"""The attack registry: adding an attack is one module and one line here."""

ATTACKS: dict = {}
