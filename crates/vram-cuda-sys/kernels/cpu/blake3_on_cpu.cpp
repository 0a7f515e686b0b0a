// blake3_on_cpu.cpp: runs ../blake3_tree.cu's kernels on the CPU (cuda_on_cpu.h) the way the
// engine launches them, and prints one BLAKE3 digest (hex) per line for `tests/kernel_source.rs`
// to compare with the `blake3` crate.
//
// Usage: blake3_on_cpu SIZE... : the digest of each size's pattern bytes (byte i of a range r
// is (i * 7 + r * 13 + (i >> 9)) mod 256), first each range alone (the chunk-group kernel in
// blocks of 128 or 4 as whole-GPU launches, or every second size the chunk kernel with 4 chunks
// per thread as bounded launches; then 256-to-1 folds), then all the sizes as the ranges of one
// model (range kernels, one launch per fold), then as a model through the range chunk-group
// kernel (groups of 128 chunks, then of 4, and the same folds).
#include <cstdio>
#include <cstdlib>

#include "cuda_on_cpu.h"
#include "../blake3_tree.cu"

static std::vector<uint8_t> pattern(uint64_t n, uint64_t r) {
    std::vector<uint8_t> d(n + 16);
    for (uint64_t i = 0; i < n; i++) d[i] = (uint8_t)(i * 7 + r * 13 + (i >> 9));
    return d;
}

static void print(const uint32_t* cv) {
    for (int i = 0; i < 32; i++) printf("%02x", ((const uint8_t*)cv)[i]);
    printf("\n");
}

static uint64_t chunks_of(uint64_t n) { return n == 0 ? 1 : (n + 1023) / 1024; }

static void print_roots(const uint32_t* roots, uint64_t ranges) {
    for (uint64_t r = 0; r < ranges; r++) print(roots + 8 * r);
}

// Per level, the ranges + 1 prefix offsets of every range's nodes: level 0 has `counts` nodes,
// each next level a 256th as many (rounded up), until every range has one.
static std::vector<std::vector<uint64_t>> levels_of(std::vector<uint64_t> counts) {
    std::vector<std::vector<uint64_t>> offs;
    for (;;) {
        std::vector<uint64_t> o(1, 0);
        for (uint64_t c : counts) o.push_back(o.back() + c);
        offs.push_back(o);
        if (std::all_of(counts.begin(), counts.end(), [](uint64_t c) { return c <= 1; })) break;
        for (uint64_t& c : counts) c = (c + FOLD_FAN_IN - 1) / FOLD_FAN_IN;
    }
    return offs;
}

// The range folds over level 0's nodes at `a` (ping-pong with `b`); returns where the roots are.
static uint32_t* fold_ranges(const std::vector<std::vector<uint64_t>>& offs, uint32_t* a, uint32_t* b) {
    uint64_t ranges = offs[0].size() - 1;
    for (size_t l = 1; l < offs.size(); l++) {
        uint64_t n_out = offs[l][ranges];
        launch((unsigned)n_out, FOLD_THREADS, [&] {
            blake3_range_fold(a, b, offs[l - 1].data(), offs[l].data(), ranges, n_out);
        });
        std::swap(a, b);
    }
    return a;
}

int main(int argc, char** argv) {
    std::vector<uint64_t> lens;
    for (int i = 1; i < argc; i++) lens.push_back(strtoull(argv[i], nullptr, 10));
    std::vector<std::vector<uint8_t>> datas;
    for (size_t r = 0; r < lens.size(); r++) datas.push_back(pattern(lens[r], r));

    for (size_t r = 0; r < lens.size(); r++) {
        uint64_t n = chunks_of(lens[r]);
        std::vector<uint32_t> a(n * 8), b(n * 8);
        if (r % 2) {
            // Bounded: every chunk's chaining value, four chunks a thread.
            unsigned per = 4, block = 32;
            uint64_t threads = (n + per - 1) / per;
            launch((unsigned)((threads + block - 1) / block), block,
                   [&] { blake3_chunks(datas[r].data(), lens[r], 0, n, per, a.data()); });
        } else {
            // Whole GPU: one node per block of 128 (or, for some sizes, 4) chunks.
            unsigned block = r % 4 ? 4 : 128;
            uint64_t groups = (n + block - 1) / block;
            launch((unsigned)groups, block,
                   [&] { blake3_chunk_groups(datas[r].data(), lens[r], n, a.data()); });
            n = groups;
        }
        uint32_t *from = a.data(), *to = b.data();
        while (n > 1) {
            uint64_t out = (n + FOLD_FAN_IN - 1) / FOLD_FAN_IN;
            launch((unsigned)out, FOLD_THREADS, [&] { blake3_fold(from, to, n); });
            std::swap(from, to);
            n = out;
        }
        print(from);
    }

    uint64_t ranges = lens.size();
    std::vector<uint64_t> ptrs, counts;
    for (size_t r = 0; r < ranges; r++) {
        ptrs.push_back((uint64_t)datas[r].data());
        counts.push_back(chunks_of(lens[r]));
    }
    std::vector<std::vector<uint64_t>> offs = levels_of(counts);
    uint64_t total = offs[0][ranges];
    std::vector<uint32_t> a(total * 8), b(total * 8);
    unsigned per = 2, block = 32;
    uint64_t threads = (total + per - 1) / per;
    launch((unsigned)((threads + block - 1) / block), block, [&] {
        blake3_range_chunks(ptrs.data(), lens.data(), offs[0].data(), ranges, 0, total, per, a.data());
    });
    print_roots(fold_ranges(offs, a.data(), b.data()), ranges);

    // The model again through the range chunk-group kernel (groups of 128 chunks, then of 4),
    // then the same range folds over the groups.
    for (unsigned group : {128u, 4u}) {
        std::vector<uint64_t> groups;
        for (size_t r = 0; r < ranges; r++) groups.push_back((chunks_of(lens[r]) + group - 1) / group);
        std::vector<std::vector<uint64_t>> goffs = levels_of(groups);
        uint64_t n_groups = goffs[0][ranges];
        std::vector<uint32_t> ga(n_groups * 8), gb(n_groups * 8);
        launch((unsigned)n_groups, group, [&] {
            blake3_range_chunk_groups(ptrs.data(), lens.data(), goffs[0].data(), ranges, n_groups,
                                      ga.data());
        });
        print_roots(fold_ranges(goffs, ga.data(), gb.data()), ranges);
    }
    return 0;
}
