"""The keys fedsim sends through Flower's records, in one place: a client's reply metrics
(which the server, every observer and the evaluator read back), the train config the
server sends, the node config, and the update's facts (ConfigRecord "update")."""

# node config (SuperNode --node-config) and reply metrics
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
# reply metrics (MetricRecord "metrics")
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_ACCURACY = "train-accuracy"
DP_EPSILON = "dp-epsilon"
DP_DELTA = "dp-delta"
# train config the server sends (ConfigRecord "config")
SERVER_ROUND = "server-round"
# the update's facts (ConfigRecord "update"): how it was made, step by step
BATCH_SIZES = "batch-sizes"
DISTINCT_EXAMPLES = "distinct-examples"
DP_ACCOUNTING = "dp-accounting"
