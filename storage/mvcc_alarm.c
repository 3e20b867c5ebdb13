/*
 * Alarms: etcd's AlarmStore, replicated. Each active alarm is a "meta"
 * record written in the apply batch of the entry that raised it; the list
 * is small (one entry per member and type), so it is also kept in memory,
 * ordered by (type, member) so every member answers in the same order.
 */
#include <stdlib.h>
#include <string.h>

#include "mvcc_internal.h"

static void alarm_key(uint8_t out[META_ALARM_KEY_LEN], uint64_t member, int type)
{
    memcpy(out, META_ALARM_PREFIX, 6);
    uint32_t t = (uint32_t)type;
    out[6] = (uint8_t)(t >> 24);
    out[7] = (uint8_t)(t >> 16);
    out[8] = (uint8_t)(t >> 8);
    out[9] = (uint8_t)t;
    be64_encode(out + 10, member);
}

static int alarm_cmp(const mvcc_alarm *a, uint64_t member, int type)
{
    if (a->alarm != type)
        return a->alarm < type ? -1 : 1;
    if (a->member_id != member)
        return a->member_id < member ? -1 : 1;
    return 0;
}

static int list_reserve(mvcc_alarm **a, size_t *cap, size_t want)
{
    if (want <= *cap)
        return 0;
    size_t c = *cap ? *cap * 2 : 4;
    while (c < want)
        c *= 2;
    mvcc_alarm *p = realloc(*a, c * sizeof *p);
    if (!p)
        return -1;
    *a = p;
    *cap = c;
    return 0;
}

int alarms_load(mvcc *m)
{
    m->n_alarms = 0;
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(m->db, m->ro_plain, m->cf[CF_META]);
    int rc = 0;
    for (rocksdb_iter_seek(it, META_ALARM_PREFIX, 6); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t kl;
        const uint8_t *k = (const uint8_t *)rocksdb_iter_key(it, &kl);
        if (kl < 6 || memcmp(k, META_ALARM_PREFIX, 6) != 0)
            break;
        if (kl != META_ALARM_KEY_LEN || list_reserve(&m->alarms, &m->alarms_cap, m->n_alarms + 1)) {
            rc = -1;
            break;
        }
        uint32_t t = (uint32_t)k[6] << 24 | (uint32_t)k[7] << 16 | (uint32_t)k[8] << 8 | k[9];
        m->alarms[m->n_alarms++] = (mvcc_alarm){be64_decode(k + 10), (int)t};
    }
    if (rc == 0 && iter_failed(it))
        rc = -1;
    rocksdb_iter_destroy(it);
    return rc;
}

static void work_begin(mvcc *m)
{
    if (m->alarms_dirty)
        return;
    m->n_alarms_work = 0;
    if (list_reserve(&m->alarms_work, &m->alarms_work_cap, m->n_alarms) == 0) {
        if (m->n_alarms)
            memcpy(m->alarms_work, m->alarms, m->n_alarms * sizeof *m->alarms);
        m->n_alarms_work = m->n_alarms;
        m->alarms_dirty = true;
    }
}

bool alarm_work_active(mvcc *m, int type)
{
    const mvcc_alarm *a = m->alarms_dirty ? m->alarms_work : m->alarms;
    size_t n = m->alarms_dirty ? m->n_alarms_work : m->n_alarms;
    for (size_t i = 0; i < n; i++)
        if (a[i].alarm == type)
            return true;
    return false;
}

int alarm_work_set(mvcc *m, uint64_t member, int type, bool on, bool *changed)
{
    *changed = false;
    work_begin(m);
    if (!m->alarms_dirty)
        return -1;
    size_t i = 0;
    while (i < m->n_alarms_work && alarm_cmp(&m->alarms_work[i], member, type) < 0)
        i++;
    bool present = i < m->n_alarms_work && alarm_cmp(&m->alarms_work[i], member, type) == 0;
    if (present == on)
        return 0;
    uint8_t k[META_ALARM_KEY_LEN];
    alarm_key(k, member, type);
    if (on) {
        if (list_reserve(&m->alarms_work, &m->alarms_work_cap, m->n_alarms_work + 1))
            return -1;
        memmove(m->alarms_work + i + 1, m->alarms_work + i, (m->n_alarms_work - i) * sizeof *m->alarms_work);
        m->alarms_work[i] = (mvcc_alarm){member, type};
        m->n_alarms_work++;
        rocksdb_writebatch_wi_put_cf(m->wb, m->cf[CF_META], (const char *)k, sizeof k, "", 0);
    } else {
        memmove(m->alarms_work + i, m->alarms_work + i + 1,
                (m->n_alarms_work - i - 1) * sizeof *m->alarms_work);
        m->n_alarms_work--;
        rocksdb_writebatch_wi_delete_cf(m->wb, m->cf[CF_META], (const char *)k, sizeof k);
    }
    *changed = true;
    return 0;
}

void alarms_commit(mvcc *m)
{
    if (!m->alarms_dirty)
        return;
    /* swap: the working copy becomes the committed list */
    mvcc_alarm *a = m->alarms;
    size_t cap = m->alarms_cap;
    m->alarms = m->alarms_work;
    m->alarms_cap = m->alarms_work_cap;
    m->n_alarms = m->n_alarms_work;
    m->alarms_work = a;
    m->alarms_work_cap = cap;
    m->alarms_dirty = false;
}

int alarms_encode(const mvcc_alarm *a, size_t n, int type, uint32_t field, mvcc_buf *out)
{
    for (size_t i = 0; i < n; i++) {
        if (type != MVCC_ALARM_NONE && a[i].alarm != type)
            continue;
        size_t mark = pb_msg_begin(out, field);
        if (mark == (size_t)-1 || pb_uint_field(out, 1, a[i].member_id) ||
            pb_uint_field(out, 2, (uint64_t)(int64_t)a[i].alarm) || pb_msg_end(out, mark))
            return -1;
    }
    return 0;
}

int mvcc_alarm_list(mvcc *m, int type, mvcc_alarm **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&m->mu);
    size_t count = 0;
    for (size_t i = 0; i < m->n_alarms; i++)
        if (type == MVCC_ALARM_NONE || m->alarms[i].alarm == type)
            count++;
    int rc = 0;
    if (count) {
        mvcc_alarm *a = malloc(count * sizeof *a);
        if (a) {
            size_t j = 0;
            for (size_t i = 0; i < m->n_alarms; i++)
                if (type == MVCC_ALARM_NONE || m->alarms[i].alarm == type)
                    a[j++] = m->alarms[i];
            *out = a;
            *n = count;
        } else {
            rc = -1;
        }
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

int mvcc_alarm_active(mvcc *m, int type)
{
    pthread_mutex_lock(&m->mu);
    int found = 0;
    for (size_t i = 0; i < m->n_alarms && !found; i++)
        found = m->alarms[i].alarm == type;
    pthread_mutex_unlock(&m->mu);
    return found;
}
