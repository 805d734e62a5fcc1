"""The app's ClientApp (Message API). fedsim's one line: the eavesdropper mod, which
records each update as it leaves the node (remove it and the app is unchanged)."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from shapes_app.task import Net, loader, train
from shapes_app.facts import FACTS, capture_dir
from lab.api import eavesdropper  # fedsim

app = ClientApp(mods=[eavesdropper(capture_dir(), FACTS)])  # fedsim: on the wire


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    config, run = msg.content["config"], context.run_config
    partition_id = int(context.node_config.get("partition-id", 0))
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    size = int(run.get("partition-size", 16))
    trainloader = loader(partition_id, int(config["server-round"]), size,
                         int(config.get("batch-size", run.get("batch-size", 8))))
    loss = train(net, trainloader, int(run.get("local-epochs", 1)), float(config["lr"]))
    content = RecordDict({"arrays": ArrayRecord(net.state_dict()),
                          "metrics": MetricRecord({"train_loss": loss, "num-examples": size})})
    return Message(content=content, reply_to=msg)
