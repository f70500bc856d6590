"""bilevel.SavedBytes counts the storages autograd saves for backward, each once, while a graph holds them."""

import torch

import bilevel


def test_saved_bytes_counts_each_saved_storage_once_and_releases_it_with_the_graph():
    x = torch.randn(1000, requires_grad=True)  # 4000 bytes
    w = torch.randn(1000)
    with bilevel.SavedBytes() as m:
        y = (x * x).sum()  # mul saves x twice: one storage
        assert m.peak == 4000 and m.total == 8000
        z = (x * w).sum()  # saves w (x again: same storage)
        assert m.peak == 8000
        del y, z  # the graphs go, and with them what they saved
        assert m.current == 0
    assert m.peak == 8000


def test_reverse_k_step_keeps_more_for_backward_than_mixed_mode():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))

    class Hyper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.log_wd = torch.nn.Parameter(torch.tensor(-3.0))

    hyper = Hyper()
    x, y = torch.randn(256, 8), torch.randn(256, 1)

    def f(inner, outer, b):
        return ((inner(b[0]) - b[1]) ** 2).mean() + outer.log_wd.exp() * sum((p ** 2).sum() for p in inner.parameters())

    def g(inner, outer, b):
        return ((inner(b[0]) - b[1]) ** 2).mean()

    import torchopt

    peaks = {}
    for mode in ("reverse", "mixed"):
        s = bilevel.KStepSolver(bilevel.Problem(net, hyper, f, g), torchopt.sgd(lr=0.1),
                                torch.optim.SGD(hyper.parameters(), 0.1), steps=10, mode=mode)
        with bilevel.SavedBytes() as m:
            s.hypergradient((x, y))
        peaks[mode] = m.peak
    assert peaks["mixed"] < 0.5 * peaks["reverse"]
