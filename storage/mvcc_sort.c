/*
 * Sorting range results the way etcd 3.4.23 does: Go 1.19's sort.Sort, a
 * pattern-defeating quicksort. It is not stable, and clients can see how it
 * orders ties (equal mod revisions, versions, values), so the same sequence
 * of comparisons and swaps is reproduced here, on an array of row indexes.
 * Up to 12 rows it is a plain insertion sort.
 */
#include "mvcc_internal.h"

typedef struct sorter {
    size_t *idx;
    const kvv *kvs;
    kv_less less_fn;
    bool descend;
} sorter;

static bool less(const sorter *s, size_t i, size_t j)
{
    const kvv *a = &s->kvs[s->idx[i]], *b = &s->kvs[s->idx[j]];
    return s->descend ? s->less_fn(b, a) : s->less_fn(a, b);
}

static void swap(const sorter *s, size_t i, size_t j)
{
    size_t t = s->idx[i];
    s->idx[i] = s->idx[j];
    s->idx[j] = t;
}

static void insertion_sort(const sorter *s, size_t a, size_t b)
{
    for (size_t i = a + 1; i < b; i++)
        for (size_t j = i; j > a && less(s, j, j - 1); j--)
            swap(s, j, j - 1);
}

static void sift_down(const sorter *s, size_t lo, size_t hi, size_t first)
{
    size_t root = lo;
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= hi)
            return;
        if (child + 1 < hi && less(s, first + child, first + child + 1))
            child++;
        if (!less(s, first + root, first + child))
            return;
        swap(s, first + root, first + child);
        root = child;
    }
}

static void heap_sort(const sorter *s, size_t a, size_t b)
{
    size_t first = a, hi = b - a;
    for (size_t i = (hi - 1) / 2 + 1; i-- > 0;)
        sift_down(s, i, hi, first);
    for (size_t i = hi; i-- > 0;) {
        swap(s, first, first + i);
        sift_down(s, 0, i, first);
    }
}

static unsigned bit_len(uint64_t x)
{
    unsigned n = 0;
    while (x) {
        n++;
        x >>= 1;
    }
    return n;
}

/* Scrambles a few elements when partitions keep coming out unbalanced. */
static void break_patterns(const sorter *s, size_t a, size_t b)
{
    size_t length = b - a;
    if (length < 8)
        return;
    uint64_t random = length;
    uint64_t modulus = (uint64_t)1 << bit_len(length);
    size_t idx = a + (length / 4) * 2 - 1; /* three around the middle */
    for (size_t i = 0; i < 3; i++) {
        random ^= random << 13;
        random ^= random >> 17;
        random ^= random << 5;
        size_t other = (size_t)(random & (modulus - 1));
        if (other >= length)
            other -= length;
        swap(s, idx + i, a + other);
    }
}

enum { HINT_UNKNOWN, HINT_INCREASING, HINT_DECREASING };

static void order2(const sorter *s, size_t *a, size_t *b, int *swaps)
{
    if (less(s, *b, *a)) {
        (*swaps)++;
        size_t t = *a;
        *a = *b;
        *b = t;
    }
}

static size_t median(const sorter *s, size_t a, size_t b, size_t c, int *swaps)
{
    order2(s, &a, &b, swaps);
    order2(s, &b, &c, swaps);
    order2(s, &a, &b, swaps);
    return b;
}

static size_t median_adjacent(const sorter *s, size_t a, int *swaps)
{
    return median(s, a - 1, a, a + 1, swaps);
}

static size_t choose_pivot(const sorter *s, size_t a, size_t b, int *hint)
{
    size_t l = b - a;
    int swaps = 0;
    size_t i = a + l / 4 * 1, j = a + l / 4 * 2, k = a + l / 4 * 3;
    if (l >= 8) {
        if (l >= 50) { /* median of medians of three ("ninther") */
            i = median_adjacent(s, i, &swaps);
            j = median_adjacent(s, j, &swaps);
            k = median_adjacent(s, k, &swaps);
        }
        j = median(s, i, j, k, &swaps);
    }
    *hint = swaps == 0 ? HINT_INCREASING : swaps == 12 ? HINT_DECREASING : HINT_UNKNOWN;
    return j;
}

static void reverse_range(const sorter *s, size_t a, size_t b)
{
    for (size_t i = a, j = b - 1; i < j; i++, j--)
        swap(s, i, j);
}

/* Finishes an almost sorted range with a few shifts, or gives up. */
static bool partial_insertion_sort(const sorter *s, size_t a, size_t b)
{
    size_t i = a + 1;
    for (int step = 0; step < 5; step++) {
        while (i < b && !less(s, i, i - 1))
            i++;
        if (i == b)
            return true;
        if (b - a < 50)
            return false;
        swap(s, i, i - 1);
        if (i - a >= 2)
            for (size_t j = i - 1; j >= 1; j--) {
                if (!less(s, j, j - 1))
                    break;
                swap(s, j, j - 1);
            }
        if (b - i >= 2)
            for (size_t j = i + 1; j < b; j++) {
                if (!less(s, j, j - 1))
                    break;
                swap(s, j, j - 1);
            }
    }
    return false;
}

/* The two scans cross each other, so their positions are signed. */
static size_t partition(const sorter *s, size_t a, size_t b, size_t pivot, bool *already)
{
    swap(s, a, pivot);
    ptrdiff_t i = (ptrdiff_t)a + 1, j = (ptrdiff_t)b - 1;
    while (i <= j && less(s, (size_t)i, a))
        i++;
    while (i <= j && !less(s, (size_t)j, a))
        j--;
    if (i > j) {
        swap(s, (size_t)j, a);
        *already = true;
        return (size_t)j;
    }
    swap(s, (size_t)i, (size_t)j);
    i++;
    j--;
    for (;;) {
        while (i <= j && less(s, (size_t)i, a))
            i++;
        while (i <= j && !less(s, (size_t)j, a))
            j--;
        if (i > j)
            break;
        swap(s, (size_t)i, (size_t)j);
        i++;
        j--;
    }
    swap(s, (size_t)j, a);
    *already = false;
    return (size_t)j;
}

/* Moves everything equal to the pivot (known to be the smallest value
 * left) to the front; returns where the rest starts. */
static size_t partition_equal(const sorter *s, size_t a, size_t b, size_t pivot)
{
    swap(s, a, pivot);
    ptrdiff_t i = (ptrdiff_t)a + 1, j = (ptrdiff_t)b - 1;
    for (;;) {
        while (i <= j && !less(s, a, (size_t)i))
            i++;
        while (i <= j && less(s, a, (size_t)j))
            j--;
        if (i > j)
            break;
        swap(s, (size_t)i, (size_t)j);
        i++;
        j--;
    }
    return (size_t)i;
}

static void pdqsort(const sorter *s, size_t a, size_t b, unsigned limit)
{
    bool was_balanced = true, was_partitioned = true;
    for (;;) {
        size_t length = b - a;
        if (length <= 12) {
            insertion_sort(s, a, b);
            return;
        }
        if (limit == 0) {
            heap_sort(s, a, b);
            return;
        }
        if (!was_balanced) {
            break_patterns(s, a, b);
            limit--;
        }
        int hint;
        size_t pivot = choose_pivot(s, a, b, &hint);
        if (hint == HINT_DECREASING) {
            reverse_range(s, a, b);
            pivot = (b - 1) - (pivot - a);
            hint = HINT_INCREASING;
        }
        if (was_balanced && was_partitioned && hint == HINT_INCREASING &&
            partial_insertion_sort(s, a, b))
            return;
        if (a > 0 && !less(s, a - 1, pivot)) {
            a = partition_equal(s, a, b, pivot);
            continue;
        }
        bool already;
        size_t mid = partition(s, a, b, pivot, &already);
        was_partitioned = already;
        size_t left = mid - a, right = b - mid;
        size_t threshold = length / 8;
        if (left < right) {
            was_balanced = left >= threshold;
            pdqsort(s, a, mid, limit);
            a = mid + 1;
        } else {
            was_balanced = right >= threshold;
            pdqsort(s, mid + 1, b, limit);
            b = mid;
        }
    }
}

void sort_like_go(size_t *idx, size_t n, const kvv *kvs, kv_less less_fn, bool descend)
{
    if (n <= 1)
        return;
    sorter s = {idx, kvs, less_fn, descend};
    pdqsort(&s, 0, n, bit_len(n));
}
