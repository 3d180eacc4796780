"""ProgramCore in cocotb: layer programs driven on the core's own bus (no link): a CNN and an
MLP compiled by ``sw.program`` run bit-exactly against ``sw.model.Model.golden``; the
per-layer counters; a bad layer kind and RESET (abort) in the middle of a program, after
which the core runs again."""

import numpy as np
import pytest
import cocotb
from cocotb.triggers import FallingEdge, RisingEdge, ReadOnly

from hw.simulate import run_cocotb, tb_params
from sw import protocol as P
from sw.numerics import WeightFormat
from sw.protocol import Buffer, ErrorCode
from mixcore_tb import MixCoreTB
from program_models import cnn, lin

CONFIG = dict(rows=2, cols=4, a_depth=128, w_depth=256, out_depth=128, chan_depth=64,
              group_depth=128, pe="mixpe", act_bytes=2048, max_layers=8)
#: ACT in one bank, and in 8 (a decode register and two levels of address tree, two of
#: data tree)
ACT_BANKS = {"banks1": dict(act_bank_bytes=2048), "banks8": dict(act_bank_bytes=256)}


@pytest.mark.parametrize("banks", ACT_BANKS)
def test_programcore(banks):
    from hw.core.program import ProgramCore
    from hw.core import LAYER_LAYOUT
    from hw.netlist import vpi_top_only
    config = dict(CONFIG, **ACT_BANKS[banks])
    core = ProgramCore(**config)
    info = _info_of(core)
    fields = {n: (f.offset, f.width) for n, f in LAYER_LAYOUT}
    params = dict(config, read_latency=core.READ_LATENCY, out_bytes=core.out_bytes,
                  checked_out_bytes=0, cfg_fields=fields, watchdog=core.WATCHDOG,
                  info=info.pack().hex())
    vlt, args = vpi_top_only(f"programcore_{banks}")
    run_cocotb(core, name=f"programcore_{banks}", test_module="test_programcore", params=params,
               extra_sources=vlt, build_args=args)


def _info_of(core):
    from hw.soc.link import Link
    return Link.for_core(core).info


# -- cocotb side ------------------------------------------------------------------------------

class ProgramTB(MixCoreTB):
    async def reset(self):
        self.dut.prog_start.value = 0
        self.dut.prog_count.value = 0
        await super().reset()

    async def load(self, compiled):
        for p in compiled.placements:
            await self.write(p.buffer, p.data, p.address)

    async def run_program(self, count, timeout=200_000):
        d = self.dut
        await FallingEdge(d.clk)
        d.prog_start.value = 1
        d.prog_count.value = count
        await FallingEdge(d.clk)
        d.prog_start.value = 0
        for _ in range(timeout):
            await RisingEdge(d.clk)
            await ReadOnly()
            if int(d.done.value):
                err = ErrorCode(int(d.error.value))
                await FallingEdge(d.clk)
                return err
        raise AssertionError(f"program not done after {timeout} cycles")

    async def infer(self, model, compiled, x):
        await self.write(Buffer.ACT, x.astype(np.int8).tobytes(), compiled.input_base)
        err = await self.run_program(len(compiled.layers))
        assert err == ErrorCode.OK, err
        y = await self.read(Buffer.ACT, compiled.output_bytes, compiled.output_base)
        return np.frombuffer(y, dtype=np.int8).reshape((x.shape[0],) + compiled.output_shape)

    async def counters(self, n):
        data = await self.read(Buffer.LCNT, n * P.LCNT_RECORD)
        return [P.LayerCounters.unpack(data[i:i + P.LCNT_RECORD])
                for i in range(0, len(data), P.LCNT_RECORD)]


async def _setup(dut):
    from sw.program import compile_model
    p = tb_params()
    tb = ProgramTB(dut, p)
    await tb.reset()
    return tb, P.DeviceInfo.unpack(bytes.fromhex(p["info"])), compile_model


@cocotb.test()
async def cnn_program_bit_exact(dut):
    tb, info, compile_model = await _setup(dut)
    rng = np.random.default_rng(11)
    model = cnn(rng, in_shape=(6, 6, 2), in_zero=-9)
    cp = compile_model(model, info, batch=1)
    await tb.load(cp)
    for trial in range(2):
        x = rng.integers(-128, 128, size=(1, 6, 6, 2))
        y = await tb.infer(model, cp, x)
        np.testing.assert_array_equal(y, model.golden(x), strict=True)
    recs = await tb.counters(len(cp.layers))
    assert [r.status for r in recs] == [ErrorCode.OK] * len(cp.layers)
    assert [r.macs for r in recs] == cp.macs
    assert all(r.cycles > r.core_cycles for r in recs)


@cocotb.test()
async def mlp_int4_groups_and_ternary(dut):
    tb, info, compile_model = await _setup(dut)
    from sw import model as mdl
    rng = np.random.default_rng(12)
    l1 = lin(rng, 40, 12, fmt=WeightFormat.INT4, group=32, xz=5, yz=-3, relu=True)
    l2 = lin(rng, 12, 6, fmt=WeightFormat.TERNARY, xz=-3, yz=0)
    model = mdl.Model([mdl.Dense(l1, name="fc1"), mdl.Dense(l2, name="fc2")], input_shape=(40,),
                      in_scale=0.05, in_zero=5, out_scale=0.05, out_zero=0)
    cp = compile_model(model, info, batch=5)
    await tb.load(cp)
    x = rng.integers(-128, 128, size=(5, 40))
    np.testing.assert_array_equal(await tb.infer(model, cp, x), model.golden(x), strict=True)


@cocotb.test()
async def bad_kind_and_abort_then_runs_again(dut):
    tb, info, compile_model = await _setup(dut)
    rng = np.random.default_rng(13)
    model = cnn(rng, in_shape=(6, 6, 2), in_zero=0)
    cp = compile_model(model, info, batch=1)
    await tb.load(cp)
    bad = P.ProgramLayer(P.LayerDescriptor(1, 1, 1), kind=5).pack()
    await tb.write(Buffer.PROG, bad, P.PROGRAM_RECORD)       # replace layer 1
    assert await tb.run_program(3) == ErrorCode.BAD_PARAM
    recs = await tb.counters(2)
    assert [r.status for r in recs] == [ErrorCode.OK, ErrorCode.BAD_PARAM]
    await tb.load(cp)
    d = tb.dut
    x = rng.integers(-128, 128, size=(1, 6, 6, 2))
    # a whole run's length, then RESET (abort) at delays spread over it: every phase of every
    # layer (fetch, gather, core run, scatter), each followed by a full inference that must be
    # exact (a stopped run must leave nothing behind that the next one sees)
    await tb.write(Buffer.ACT, x.astype(np.int8).tobytes(), cp.input_base)
    await FallingEdge(d.clk)
    d.prog_start.value = 1
    d.prog_count.value = len(cp.layers)
    await FallingEdge(d.clk)
    d.prog_start.value = 0
    for run_cycles in range(1, 200_000):
        await FallingEdge(d.clk)
        if int(d.done.value):
            break
    else:
        raise AssertionError("program not done after 200000 cycles")
    assert ErrorCode(int(d.error.value)) == ErrorCode.OK
    delays = range(3, run_cycles - 8, max(1, run_cycles // 37))
    for delay in delays:
        await FallingEdge(d.clk)
        d.prog_start.value = 1
        d.prog_count.value = len(cp.layers)
        await FallingEdge(d.clk)
        d.prog_start.value = 0
        for _ in range(delay):
            await FallingEdge(d.clk)
        d.abort.value = 1
        for _ in range(5000):
            await RisingEdge(d.clk)
            await ReadOnly()
            if int(d.done.value):
                assert ErrorCode(int(d.error.value)) == ErrorCode.ABORTED
                break
        else:
            raise AssertionError("no done after abort")
        await FallingEdge(d.clk)
        d.abort.value = 0
        await FallingEdge(d.clk)
        assert not int(d.busy.value)
        np.testing.assert_array_equal(await tb.infer(model, cp, x), model.golden(x), strict=True,
                                      err_msg=f"after an abort {delay} of {run_cycles} cycles in")


@cocotb.test()
async def act_banks_host_write_read(dut):
    """ACT is banked (ACT_BANKS): every byte written, then all read back in one stream; and
    in each bank a byte read in every cycle right after its write returns the new byte (a
    read issued after a write sees it)."""
    tb, info, _ = await _setup(dut)
    rng = np.random.default_rng(14)
    image = rng.integers(0, 256, size=info.act_bytes, dtype=np.uint8)
    await tb.write(Buffer.ACT, image.tobytes())
    back = np.frombuffer(await tb.read(Buffer.ACT, info.act_bytes), dtype=np.uint8)
    np.testing.assert_array_equal(back, image, strict=True)
    bank = tb.p["act_bank_bytes"]
    for addr in range(bank // 2, info.act_bytes, bank):
        value = int(image[addr]) ^ 0xA5
        got = [v for _, v in await tb.write_then_read(Buffer.ACT, addr, value, 12)]
        assert got == [value] * 12, (addr, value, got)
    # PROG and LCNT (one cycle from their address) still line up with ACT's longer path
    recs = rng.integers(0, 256, size=2 * P.PROGRAM_RECORD, dtype=np.uint8).tobytes()
    await tb.write(Buffer.PROG, recs)
    assert await tb.read(Buffer.PROG, len(recs)) == recs
