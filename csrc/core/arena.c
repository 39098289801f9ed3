/*
 * arena.c — aligned allocation and the per-call scratch arena.
 *
 * An arena is a chain of blocks. Allocation bumps a pointer in the newest
 * block and chains a bigger block when it is full, so scratch never runs out
 * half-way through a computation. Reset frees the chain and, if more than one
 * block was needed, replaces it by a single block of the high-water size: a
 * workload that repeats (one batch after another) allocates once.
 */
#include "eg.h"

#include <stdlib.h>
#include <string.h>

struct eg_arena_block {
    eg_arena_block *next;
    size_t cap;
    size_t used;
    unsigned char *data; /* 64-byte aligned */
};

void *eg_aligned_alloc(size_t bytes)
{
    size_t rounded;
    if (bytes == 0) {
        bytes = 1;
    }
    if (eg_add_ovf(bytes, EG_ALIGN - 1, &rounded)) {
        return NULL;
    }
    rounded &= ~(size_t)(EG_ALIGN - 1);
    return aligned_alloc(EG_ALIGN, rounded);
}

void eg_aligned_free(void *p)
{
    free(p);
}

static eg_arena_block *block_new(size_t cap)
{
    eg_arena_block *b = malloc(sizeof *b);
    if (b == NULL) {
        return NULL;
    }
    b->data = eg_aligned_alloc(cap);
    if (b->data == NULL) {
        free(b);
        return NULL;
    }
    b->cap = cap;
    b->used = 0;
    b->next = NULL;
    return b;
}

void eg_arena_init(eg_arena *a)
{
    a->head = NULL;
    a->high_water = 0;
    a->in_use = 0;
}

void *eg_arena_alloc(eg_arena *a, size_t bytes)
{
    size_t need;
    if (eg_add_ovf(bytes, EG_ALIGN - 1, &need)) {
        return NULL;
    }
    need &= ~(size_t)(EG_ALIGN - 1);
    if (need == 0) {
        need = EG_ALIGN;
    }
    eg_arena_block *b = a->head;
    if (b == NULL || b->cap - b->used < need) {
        size_t cap = need;
        size_t doubled = b != NULL ? b->cap : 0;
        if (doubled <= SIZE_MAX / 2) {
            doubled *= 2;
        }
        if (doubled > cap) {
            cap = doubled;
        }
        if (cap < (size_t)1 << 16) {
            cap = (size_t)1 << 16;
        }
        eg_arena_block *nb = block_new(cap);
        if (nb == NULL) {
            return NULL;
        }
        nb->next = a->head;
        a->head = nb;
        b = nb;
    }
    void *p = b->data + b->used;
    b->used += need;
    if (eg_add_ovf(a->in_use, need, &a->in_use)) {
        a->in_use = SIZE_MAX;
    }
    if (a->in_use > a->high_water) {
        a->high_water = a->in_use;
    }
    return p;
}

void *eg_arena_alloc_n(eg_arena *a, size_t n, size_t size)
{
    size_t bytes;
    if (eg_mul_ovf(n, size, &bytes)) {
        return NULL;
    }
    return eg_arena_alloc(a, bytes);
}

void eg_arena_reset(eg_arena *a)
{
    if (a->head != NULL && a->head->next != NULL) {
        /* Several blocks were needed: coalesce into one of high-water size. */
        size_t want = a->high_water;
        eg_arena_free(a);
        a->high_water = want;
        a->head = block_new(want); /* on failure: the next alloc retries */
    } else if (a->head != NULL) {
        a->head->used = 0;
    }
    a->in_use = 0;
}

void eg_arena_free(eg_arena *a)
{
    eg_arena_block *b = a->head;
    while (b != NULL) {
        eg_arena_block *next = b->next;
        eg_aligned_free(b->data);
        free(b);
        b = next;
    }
    a->head = NULL;
    a->in_use = 0;
    a->high_water = 0;
}

size_t eg_arena_num_blocks(const eg_arena *a)
{
    size_t n = 0;
    for (const eg_arena_block *b = a->head; b != NULL; b = b->next) {
        n++;
    }
    return n;
}
