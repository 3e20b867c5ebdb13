/*
 * heap_pages — start again with glibc's heaps on transparent huge pages
 * (see heap_pages.h).
 */
#include "heap_pages.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define THP_MODE_FILE "/sys/kernel/mm/transparent_hugepage/enabled"

/* Whether the colon-separated name=value list names the tunable. */
static bool names_tunable(const char *list)
{
    const size_t len = strlen(HEAP_PAGES_TUNABLE);
    for (const char *p = list; *p;) {
        const char *end = strchr(p, ':');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n > len && strncmp(p, HEAP_PAGES_TUNABLE, len) == 0 && p[len] == '=')
            return true;
        if (!end)
            break;
        p = end + 1;
    }
    return false;
}

char *heap_pages_tunables(const char *thp_mode, const char *tunables, const char *ld_preload)
{
    if (!thp_mode || !strstr(thp_mode, "[madvise]"))
        return NULL;
    if (ld_preload && *ld_preload)
        return NULL;
    if (tunables && names_tunable(tunables))
        return NULL;
    const char *add = HEAP_PAGES_TUNABLE "=1";
    size_t have = tunables ? strlen(tunables) : 0;
    char *out = malloc(have + 1 + strlen(add) + 1);
    if (!out)
        return NULL;
    /* first: glibc's loader cuts the variable in place at each ':' as it
     * reads it (so /proc/PID/environ shows only the first); in first place
     * the tunable is seen in any view of it */
    if (have)
        sprintf(out, "%s:%s", add, tunables);
    else
        strcpy(out, add);
    return out;
}

void heap_pages_restart(char **argv)
{
    char mode[256] = "";
    FILE *f = fopen(THP_MODE_FILE, "re");
    if (f) {
        if (!fgets(mode, sizeof mode, f))
            mode[0] = '\0';
        fclose(f);
    }
    char *value = heap_pages_tunables(f ? mode : NULL, getenv("GLIBC_TUNABLES"), getenv("LD_PRELOAD"));
    if (!value)
        return;
    /* the new program's environment: this one's, with GLIBC_TUNABLES set
     * to value; this process's own is left as it is */
    static const char name[] = "GLIBC_TUNABLES=";
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 2, sizeof *env);
    char *entry = malloc(strlen(name) + strlen(value) + 1);
    if (env && entry) {
        sprintf(entry, "%s%s", name, value);
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (strncmp(environ[i], name, strlen(name)) != 0)
                env[k++] = environ[i];
        env[k] = entry;
        execve("/proc/self/exe", argv, env);
        /* still here: run on as we are */
    }
    free(entry);
    free(env);
    free(value);
}
