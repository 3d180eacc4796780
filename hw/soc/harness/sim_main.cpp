// (Verilator mangles the double underscore of Amaranth port names into ___05F.)
// Verilator harness for the SoC: moves bytes between stdin/stdout and the SoC's byte streams.
//
// The clock runs while the device has work (receiving, computing, replying). When the SoC is
// `idle` (between frames, nothing to send, core stopped) for a few cycles, the harness flushes
// stdout and blocks on stdin without advancing simulated time. When the link `waits` inside a
// frame and stdin is empty, the harness gives the host a few milliseconds and then lets the
// clock run, so a truncated frame meets the link's inter-byte timeout as it would on the
// board. Reply bytes are flushed to stdout as soon as the link has stopped sending for a few
// cycles, also while the core keeps running (a RUN_NOWAIT or STATUS reply must reach the host
// before the GEMM ends). EOF on stdin ends the simulation. On exit the harness
// prints the number of simulated cycles and the time spent simulating (not waiting) to stderr.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <poll.h>
#include <unistd.h>
#include <vector>
#include "Vsoc.h"
#include "verilated.h"

static Vsoc *top;
static uint64_t cycles = 0;

static void tick() {
    top->clk = 0;
    top->eval();
    top->clk = 1;
    top->eval();
    cycles++;
}

static bool write_all(const std::vector<uint8_t> &buf) {
    size_t done = 0;
    while (done < buf.size()) {
        ssize_t n = write(1, buf.data() + done, buf.size() - done);
        if (n <= 0) return false;
        done += (size_t)n;
    }
    return true;
}

int main(int argc, char **argv) {
    Verilated::commandArgs(argc, argv);
    top = new Vsoc;
    auto t0 = std::chrono::steady_clock::now();
    top->rst = 1;
    top->i_stream___05Fvalid = 0;
    top->o_stream___05Fready = 1;
    for (int i = 0; i < 4; i++) tick();
    top->rst = 0;

    static uint8_t inbuf[1 << 16];
    size_t in_len = 0, in_pos = 0;
    std::vector<uint8_t> out;
    int quiet_cycles = 0, wait_cycles = 0, tx_quiet = 0;
    bool gave_grace = false;   // the host had its grace period in this silent stretch
    bool eof = false;
    double waited = 0;   // seconds blocked on the host (excluded from the speed figure)
    for (;;) {
        if (in_pos == in_len && !eof) {
            // Block only when the device is quiet; otherwise just peek.
            bool block = quiet_cycles >= 16;
            bool grace = !block && wait_cycles >= 16 && !gave_grace;
            if ((block || grace) && !out.empty()) {
                if (!write_all(out)) break;
                out.clear();
            }
            struct pollfd p = {0, POLLIN, 0};
            if (block || grace || (cycles & 1023) == 0) {
                auto w0 = std::chrono::steady_clock::now();
                if (grace) gave_grace = true;
                int r = poll(&p, 1, block ? -1 : (grace ? 5 : 0));
                if (block || grace) waited += std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
                if (r > 0) {
                    ssize_t n = read(0, inbuf, sizeof inbuf);
                    if (n <= 0) eof = true;
                    else { in_len = (size_t)n; in_pos = 0; }
                }
            }
        }
        if (eof && in_pos == in_len && quiet_cycles >= 16) break;
        // present the next input byte
        top->i_stream___05Fvalid = in_pos < in_len;
        if (in_pos < in_len) top->i_stream___05Fpayload = inbuf[in_pos];
        top->o_stream___05Fready = 1;
        top->clk = 0;
        top->eval();
        bool took = top->i_stream___05Fvalid && top->i_stream___05Fready;
        bool gave = top->o_stream___05Fvalid;
        uint8_t byte = top->o_stream___05Fpayload;
        top->clk = 1;
        top->eval();
        cycles++;
        if (took) in_pos++;
        if (gave) out.push_back(byte);
        quiet_cycles = (top->idle && !took && !gave) ? quiet_cycles + 1 : 0;
        wait_cycles = (top->waiting && !took && !gave) ? wait_cycles + 1 : 0;
        if (took || gave) gave_grace = false;
        tx_quiet = gave ? 0 : tx_quiet + 1;
        if (out.size() >= 4096 || (!out.empty() && tx_quiet >= 16)) {
            if (!write_all(out)) break;
            out.clear();
        }
    }
    if (!out.empty()) write_all(out);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() - waited;
    fprintf(stderr, "sim: %llu cycles in %.6f s (%.0f cycles/s)\n", (unsigned long long)cycles,
            secs, cycles / (secs > 0 ? secs : 1));
    top->final();
    delete top;
    return 0;
}
