"""Lightning callback and transformers helper, with tiny models on the CPU."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from paramgroups import Plan, Rule
from paramgroups.errors import PlanError
from paramgroups.schedules import Schedule

import stagenet


@pytest.mark.slow  # a fresh interpreter imports torch
def test_importing_paramgroups_imports_no_trainer():
    import subprocess

    code = ("import sys, paramgroups; paramgroups.Plan; paramgroups.audit; "
            "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- Lightning -------------------------------------------------------------------------------

L = pytest.importorskip("lightning", reason="Lightning is an optional extra (paramgroups[lightning])")


from paramgroups.integrations.lightning import PlanOptimizers  # noqa: E402


class LitNet(PlanOptimizers, L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = stagenet.Net()

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(12, 3, 8, 8, generator=g), torch.randint(0, 3, (12,), generator=g))
    return DataLoader(data, batch_size=4, shuffle=False)


def lit_plan() -> Plan:
    return Plan.progressive(["net.fc", "net.layer2", "**"], every=1, lr=0.05, optimizer="sgd",
                            momentum=0.9, schedule=Schedule("cosine", total=4, warmup=1, warmup_start=0.1))


def fit(tmp_path, epochs, ckpt=None, steps_per_epoch="auto"):
    from paramgroups.integrations.lightning import PlanCallback

    torch.manual_seed(0)
    module = LitNet()
    trainer = L.Trainer(max_epochs=epochs, callbacks=[PlanCallback(lit_plan(), steps_per_epoch=steps_per_epoch)],
                        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, deterministic=True,
                        default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader(), ckpt_path=ckpt)
    return module, trainer


def test_lightning_callback_runs_the_plan(tmp_path):
    module, trainer = fit(tmp_path, 1)
    opt = trainer.optimizers[0]
    assert len(opt.param_groups) == 3
    frozen = sorted({n.split(".")[1] for n, p in module.named_parameters() if not p.requires_grad})
    assert frozen == ["layer1", "stem"]  # the scheduler is at epoch 1: layer2 thawed, the rest not yet
    sched = trainer.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == 3 and trainer.lr_scheduler_configs[0].interval == "step"
    assert module.net.stem[1].training is False  # held statistics survive Lightning's train()


def test_lightning_resume_from_checkpoint_is_exact(tmp_path):
    full, _ = fit(tmp_path / "a", 4)
    _, trainer = fit(tmp_path / "b", 2)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed, trainer2 = fit(tmp_path / "c", 4, ckpt=str(ckpt))
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(p.requires_grad for p in resumed.parameters())


# -- transformers ----------------------------------------------------------------------------


def test_lightning_module_without_the_callback_says_what_is_missing(tmp_path):
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.raises(PlanError, match="add paramgroups.integrations.lightning.PlanCallback"):
        trainer.fit(LitNet(), loader())


def test_transformers_trainer_with_plan(tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is an optional extra")
    from paramgroups.integrations.huggingface import optimizers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    plan = Plan([Rule("bert.embeddings", freeze=True)], lr=1e-3, optimizer="adamw", weight_decay=0.01,
                no_decay=True, schedule=Schedule("linear", unit="step", total=6, warmup=2))
    opt, sched = optimizers(plan, model)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 64, (8,), generator=g), "labels": torch.tensor(i % 2)} for i in range(12)]
    emb = model.bert.embeddings.word_embeddings.weight.detach().clone()
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=2,
                                          report_to=[], save_strategy="no", logging_strategy="no",
                                          use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, sched))
    trainer.train()
    assert sched.last_epoch == 6
    assert sched.get_last_lr()[-1] == pytest.approx(0.0, abs=1e-15)  # linear decay ended at 0
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, emb)


def test_transformers_helper_needs_steps_for_epoch_schedules():
    from paramgroups.integrations.huggingface import optimizers

    with pytest.raises(PlanError, match="steps the scheduler every optimizer step: give steps_per_epoch"):
        optimizers(Plan(schedule=Schedule("cosine", total=3)), stagenet.Net())


def test_huggingface_helper_refuses_an_epoch_warmup_without_steps_per_epoch():
    from paramgroups.integrations.huggingface import optimizers

    with pytest.raises(PlanError, match="give steps_per_epoch"):
        optimizers(Plan(lr=0.1, schedule=Schedule("constant", warmup=2)), stagenet.Net())
