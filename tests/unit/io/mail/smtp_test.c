/* SMTP options that need no server: which STARTTLS setting a send uses (issue 17: the
 * default must not let a stripped STARTTLS carry mail.url's credentials in clear). */
#include <string.h>

#include "io/mail/smtp.h"
#include "test.h"

static void test_starttls_auto(void)
{
    /* credentials in the URL: auto requires STARTTLS */
    CHECK_EQ_STR(tms_smtp_starttls_mode("smtp://tms:pw@mail.example.com:587", "auto"), "require");
    CHECK_EQ_STR(tms_smtp_starttls_mode("smtp://tms@mail.example.com:587", "auto"), "require");
    CHECK_EQ_STR(tms_smtp_starttls_mode("smtp://:pw@mail.example.com:587", "auto"), "require");
    CHECK_EQ_STR(tms_smtp_starttls_mode("smtp://us%40er:p%3Aw@127.0.0.1:25", "auto"), "require");
    CHECK_EQ_STR(tms_smtp_starttls_mode("smtps://tms:pw@mail.example.com:465", "auto"), "require");
    /* none: it tries, as before */
    CHECK_EQ_STR(tms_smtp_starttls_mode("smtp://mail.example.com:25", "auto"), "try");
    CHECK_EQ_STR(tms_smtp_starttls_mode("smtp://127.0.0.1:1025", "auto"), "try");
    /* said explicitly: kept, credentials or not */
    CHECK_EQ_STR(tms_smtp_starttls_mode("smtp://tms:pw@mail.example.com:587", "try"), "try");
    CHECK_EQ_STR(tms_smtp_starttls_mode("smtp://tms:pw@mail.example.com:587", "off"), "off");
    CHECK_EQ_STR(tms_smtp_starttls_mode("smtp://mail.example.com:25", "require"), "require");
    CHECK_EQ_STR(tms_smtp_starttls_mode("smtp://mail.example.com:25", "bogus"), "try");
}

int main(void)
{
    RUN_TEST(test_starttls_auto);
    TEST_EXIT();
}
