/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * A cumulative live patch for amber's tests: /proc/cmdline gains the marker
 * "amber-livepatch-<version>".  cmdline_proc_show() is replaced with a function
 * that prints a copy of the command line taken when the module was loaded
 * (saved_command_line is not exported to modules), without any earlier marker.
 * Every version uses atomic replace, so loading another version is an upgrade
 * or a downgrade, never a stack.
 */
#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <linux/string.h>

#define AMBER_MARKER " amber-livepatch-"

static char amber_cmdline[4096];

static int amber_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s" AMBER_MARKER "%s\n", amber_cmdline, AMBER_LP_VERSION);
	return 0;
}

static int amber_copy_cmdline(void)
{
	struct file *f;
	loff_t pos = 0;
	ssize_t n;
	char *marker;

	f = filp_open("/proc/cmdline", O_RDONLY, 0);
	if (IS_ERR(f))
		return PTR_ERR(f);
	n = kernel_read(f, amber_cmdline, sizeof(amber_cmdline) - 1, &pos);
	filp_close(f, NULL);
	if (n < 0)
		return n;
	amber_cmdline[n] = '\0';
	strim(amber_cmdline);
	marker = strstr(amber_cmdline, AMBER_MARKER);
	if (marker)
		*marker = '\0';
	return 0;
}

static struct klp_func amber_funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = amber_cmdline_proc_show,
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

static int __init amber_lp_init(void)
{
	int ret = amber_copy_cmdline();

	if (ret)
		return ret;
	return klp_enable_patch(&amber_patch);
}

static void __exit amber_lp_exit(void)
{
}

module_init(amber_lp_init);
module_exit(amber_lp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_VERSION(AMBER_LP_VERSION);
MODULE_DESCRIPTION("amber test live patch " AMBER_LP_VERSION ": marks /proc/cmdline");
