import torch

from modules.engine.accel import GraphedForward, disable_cuda_graphs, enable_cuda_graphs


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x)


def test_not_installed_off_cuda():
    module = Tiny()
    assert enable_cuda_graphs(module) is False
    assert "forward" not in module.__dict__
    disable_cuda_graphs(module)  # harmless when nothing is installed
    assert module(torch.ones(1, 4)).shape == (1, 4)


def test_loader_option_default_on():
    from modules.engine.loader import LoadOptions

    assert LoadOptions().cuda_graphs is True


def test_graphed_forward_is_only_built_for_cuda():
    assert callable(GraphedForward.__call__)
