// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * A live patch whose transition a user can hold up at will: it replaces pause(2) with
 * an identical copy, so a task sleeping in pause() has the old function on its stack
 * and cannot switch until it wakes.  The kernel wakes such tasks with a fake signal
 * after about 15 s, so a transition limit shorter than that sees a real stall.
 */
#include <linux/errno.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>

static long amber_sys_pause(const struct pt_regs *regs)
{
	while (!signal_pending(current)) {
		__set_current_state(TASK_INTERRUPTIBLE);
		schedule();
	}
	return -ERESTARTNOHAND;
}

static struct klp_func amber_funcs[] = {
	{
		.old_name = "__x64_sys_pause",	/* one body with its __ia32_ and __do_sys_ aliases */
		.new_func = amber_sys_pause,
	},
	{}
};

static struct klp_object amber_objs[] = {
	{
		/* name == NULL: vmlinux */
		.funcs = amber_funcs,
	},
	{}
};

static struct klp_patch amber_patch = {
	.mod = THIS_MODULE,
	.objs = amber_objs,
	.replace = true,
};

static int __init amber_lp_stall_init(void)
{
	return klp_enable_patch(&amber_patch);
}

static void __exit amber_lp_stall_exit(void)
{
}

module_init(amber_lp_stall_init);
module_exit(amber_lp_stall_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("amber test live patch: pause(2), for stalled transitions");
