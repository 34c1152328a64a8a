// SPDX-License-Identifier: GPL-2.0-or-later
/* An ordinary module (not a live patch) for amber's tests: it only logs. */
#include <linux/kernel.h>
#include <linux/module.h>

static int __init amber_plain_init(void)
{
	pr_info("amber_plain: loaded\n");
	return 0;
}

static void __exit amber_plain_exit(void)
{
	pr_info("amber_plain: unloaded\n");
}

module_init(amber_plain_init);
module_exit(amber_plain_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("amber test module that is not a live patch");
MODULE_INFO(amber_extra, "first");
MODULE_INFO(amber_extra, "second");
