/*
 * test_cdc_backfill.c - the backfill's visibility guard
 * (cdc_snapshot_running_any, src/source/cdc_backfill.c): which snapshots
 * list a transaction the stream already delivered.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "source/cdc_ext.h"

static void running_xids(void **state)
{
    (void)state;
    const uint32_t seen[] = {101, 104, 7};
    assert_int_equal(cdc_snapshot_running_any("100:105:", seen, 3), 0);
    assert_int_equal(cdc_snapshot_running_any("100:110:101", seen, 3), 1);
    assert_int_equal(cdc_snapshot_running_any("100:110:102,103", seen, 3), 0);
    assert_int_equal(cdc_snapshot_running_any("100:110:102,103,104", seen, 3), 1);
    assert_int_equal(cdc_snapshot_running_any("100:110:102,103", seen, 0), 0);
    /* xid8 with an epoch: compared by the low 32 bits (epoch 1, xid 101) */
    assert_int_equal(cdc_snapshot_running_any("4294967396:4294967400:4294967397", seen, 3), 1);
    assert_int_equal(cdc_snapshot_running_any("4294967396:4294967400:4294967398", seen, 3), 0);
    /* not a snapshot: treated as "cannot tell", so the chunk is read again */
    assert_int_equal(cdc_snapshot_running_any("", seen, 3), 1);
    assert_int_equal(cdc_snapshot_running_any("100:110", seen, 3), 1);
    assert_int_equal(cdc_snapshot_running_any("100:110:102,", seen, 3), 1);
    assert_int_equal(cdc_snapshot_running_any("100:110:x", seen, 3), 1);
    assert_int_equal(cdc_snapshot_running_any(":110:", seen, 3), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(running_xids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
