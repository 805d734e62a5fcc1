"""shapes_app: a Flower app of its own (model, data, training), observed by fedsim."""
