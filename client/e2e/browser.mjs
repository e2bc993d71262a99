#!/usr/bin/env node
// Browser test of the client against a running stack, through its gateway, in headless
// Chromium (Debian's /usr/bin/chromium, driven by playwright-core).
//
//   MICROBLOG_URL=http://127.0.0.1:8080 npm run e2e
//
// Env: MICROBLOG_URL (default http://127.0.0.1:8080), CHROMIUM_PATH (default
// /usr/bin/chromium), E2E_TIMEOUT_MS (each wait's deadline, default 15000).
// Screenshots go to e2e/artifacts/. Exits 0 when every step passes, 1 otherwise.

import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const BASE = (process.env.MICROBLOG_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const TIMEOUT = Number(process.env.E2E_TIMEOUT_MS || 15000);
const TOTAL_TIMEOUT = Math.max(120_000, TIMEOUT * 8);
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), 'artifacts');

const AWAITING = 'Awaiting moderation';
const REJECTED = 'This comment has been rejected';

// Unique per run, so reruns against a persistent stack never match an older post.
const RUN = `${new Date().toISOString().replace(/[:.]/g, '-')}-${Math.random().toString(36).slice(2, 7)}`;

function fail(message) {
  console.error(`\n✗ e2e failed: ${message}`);
  process.exit(1);
}

if (!existsSync(CHROMIUM)) {
  fail(
    `no Chromium at ${CHROMIUM}. Install it with client/e2e/install-chromium.sh ` +
      `(apt-get install chromium), or set CHROMIUM_PATH.`,
  );
}

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch {
  fail('playwright-core is not installed; run `npm ci` in client/ first.');
}

// The stack must answer before a browser is worth starting.
try {
  const response = await fetch(`${BASE}/posts?limit=1`, { signal: AbortSignal.timeout(5000) });
  if (!response.ok) throw new Error(`GET /posts answered HTTP ${response.status}`);
} catch (error) {
  fail(`the stack at ${BASE} is not reachable (${error.message}). Start it, or set MICROBLOG_URL.`);
}

const watchdog = setTimeout(() => fail(`the whole run took longer than ${TOTAL_TIMEOUT} ms`), TOTAL_TIMEOUT);
watchdog.unref();

let browser;
const pages = {};

async function step(name, action) {
  const started = Date.now();
  try {
    await action();
    console.log(`✓ ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    console.error(`✗ ${name} (${Date.now() - started} ms)`);
    const shot = join(ARTIFACTS, 'failure.png');
    try {
      const page = pages.first ?? Object.values(pages)[0];
      if (page) {
        await page.screenshot({ path: shot, fullPage: false });
        console.error(`  screenshot: ${shot}`);
      }
    } catch {
      // The browser may be gone; the message below is what matters.
    }
    await browser?.close().catch(() => {});
    fail(`${name}: ${error?.message?.split('\n')[0] ?? error}`);
  }
}

/** Waits until `predicate(arg)` is truthy in the page, or throws `message` at the deadline. */
async function waitInPage(page, message, predicate, arg) {
  try {
    await page.waitForFunction(predicate, arg, { timeout: TIMEOUT, polling: 50 });
  } catch {
    throw new Error(`${message} (after ${TIMEOUT} ms)`);
  }
}

/** Records every text each comment of the page shows, in order, as the DOM changes. */
function recordCommentHistory() {
  const history = {};
  const record = () => {
    for (const item of document.querySelectorAll('li[data-comment-id]')) {
      const seen = (history[item.dataset.commentId] ??= []);
      const text = item.querySelector('.comment__text')?.textContent ?? '';
      if (seen[seen.length - 1] !== text) seen.push(text);
    }
  };
  record();
  new MutationObserver(record).observe(document.body, { subtree: true, childList: true, characterData: true });
  window.__commentHistory = history;
  // A reload would wipe this marker: its survival proves the page was never reloaded.
  window.__noReload = true;
}

/**
 * Runs in each page before the app. Keeps the page's EventSources reachable, so the test
 * can drop the open stream, and makes the moderation check deterministic: the services
 * moderate in milliseconds, often before the page has rendered the new comment at all, so
 * a `CommentUpdated` for one of this run's comments is held back (in order, with everything
 * after it) until the page has shown that comment as "Awaiting moderation", for at most
 * 5 s. Every event still comes from the real stack; only its delivery is delayed, as a
 * slower moderation would delay it. A page that never shows the pending state still fails.
 */
function hookEventSource() {
  const Native = window.EventSource;
  const sources = [];
  const HOLD_MAX_MS = 5000;
  const heldComment = (event) => {
    try {
      const data = JSON.parse(event.data);
      const marker = window.__holdMarker;
      return data.type === 'CommentUpdated' && marker && data.comment.content.includes(marker) ? data.comment.id : null;
    } catch {
      return null;
    }
  };
  const shownPending = (id) => (window.__commentHistory?.[id] ?? []).includes('Awaiting moderation');
  window.EventSource = class extends Native {
    constructor(...args) {
      super(...args);
      sources.push(this);
      this.queue = [];
      this.heldSince = null;
      this.timer = null;
    }
    addEventListener(type, listener, options) {
      if (type !== 'message') return super.addEventListener(type, listener, options);
      return super.addEventListener(
        type,
        (event) => {
          this.queue.push([listener, event]);
          this.pump();
        },
        options,
      );
    }
    pump() {
      while (this.queue.length > 0) {
        const [listener, event] = this.queue[0];
        const held = heldComment(event);
        if (held && !shownPending(held)) {
          this.heldSince ??= Date.now();
          if (Date.now() - this.heldSince < HOLD_MAX_MS) {
            this.timer ??= setTimeout(() => {
              this.timer = null;
              this.pump();
            }, 10);
            return;
          }
        }
        this.heldSince = null;
        this.queue.shift();
        listener.call(this, event);
      }
    }
  };
  window.__dropStream = () => {
    const source = sources[sources.length - 1];
    source.close();
    source.dispatchEvent(new Event('error'));
  };
}

/** Content-Security-Policy violations any page reported; the run ends with none. */
const cspViolations = [];

/** The client's security headers, as its nginx and the local gateway both send them. */
function assertSecurityHeaders(response, label) {
  const headers = response.headers();
  const policy = headers['content-security-policy'] ?? '';
  for (const directive of ["default-src 'self'", "frame-ancestors 'none'"]) {
    if (!policy.includes(directive)) throw new Error(`${label}: no ${directive} in the CSP ${JSON.stringify(policy)}`);
  }
  if (policy.includes('unsafe-inline')) throw new Error(`${label}: the CSP allows inline code: ${policy}`);
  if (headers['x-content-type-options'] !== 'nosniff') throw new Error(`${label}: no X-Content-Type-Options: nosniff`);
  if (!headers['referrer-policy']) throw new Error(`${label}: no Referrer-Policy`);
}

async function openApp(context, label) {
  const page = await context.newPage();
  await page.addInitScript(hookEventSource);
  page.on('pageerror', (error) => console.error(`  [${label}] page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.text().includes('Content Security Policy')) cspViolations.push(`[${label}] ${message.text()}`);
  });
  const response = await page.goto(`${BASE}/`, { waitUntil: 'domcontentloaded', timeout: TIMEOUT });
  assertSecurityHeaders(response, label);
  await page.getByRole('heading', { name: 'Microblog', level: 1 }).waitFor({ timeout: TIMEOUT });
  await waitInPage(page, `${label}: the live stream never connected (no "Live" badge)`, () =>
    document.querySelector('.connection--live'),
  );
  await waitInPage(page, `${label}: the posts never finished loading`, () => !document.querySelector('.loading'));
  await page.evaluate(recordCommentHistory);
  await page.evaluate((run) => (window.__holdMarker = run), RUN);
  return page;
}

async function commentHistory(page, postTitle, index) {
  return page.evaluate(
    ({ postTitle, index }) => {
      const article = [...document.querySelectorAll('article')].find(
        (a) => a.querySelector('h3')?.textContent === postTitle,
      );
      const item = article?.querySelectorAll('li[data-comment-id]')[index];
      return item ? (window.__commentHistory[item.dataset.commentId] ?? []) : null;
    },
    { postTitle, index },
  );
}

function expectLiveTransition(history, final, what) {
  const pending = history.indexOf(AWAITING);
  const done = history.lastIndexOf(final);
  if (pending < 0 || done < 0 || pending > done) {
    throw new Error(`${what}: expected "${AWAITING}" then "${final}", saw ${JSON.stringify(history)}`);
  }
}

/** Waits until comment `index` of the post shows `text` (live: the page is never reloaded). */
async function waitForComment(page, label, postTitle, index, text) {
  await waitInPage(
    page,
    `${label}: comment ${index + 1} of "${postTitle}" never showed "${text}"`,
    ({ postTitle, index, text }) => {
      const article = [...document.querySelectorAll('article')].find(
        (a) => a.querySelector('h3')?.textContent === postTitle,
      );
      const item = article?.querySelectorAll('li[data-comment-id]')[index];
      return item?.querySelector('.comment__text')?.textContent === text;
    },
    { postTitle, index, text },
  );
}

async function assertNotReloaded(page, label) {
  if (!(await page.evaluate(() => window.__noReload === true))) throw new Error(`${label} was reloaded`);
}

const title = `E2E post ${RUN}`;
const approvedText = `Lovely apples ${RUN}`;
const rejectedText = `I like Orange juice ${RUN}`;
const secondTitle = `E2E second post ${RUN}`;

console.log(`e2e against ${BASE} with ${CHROMIUM}, run ${RUN}`);
mkdirSync(ARTIFACTS, { recursive: true });
rmSync(join(ARTIFACTS, 'failure.png'), { force: true });

await step('launch headless Chromium', async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    timeout: TIMEOUT * 2,
  });
});

const context = await browser.newContext({ viewport: { width: 1100, height: 900 }, colorScheme: 'light' });

await step('open the app in two pages, both live', async () => {
  pages.first = await openApp(context, 'first page');
  pages.second = await openApp(context, 'second page');
  // The test types into the first page: make it the active tab (a background tab gets no
  // animation frames, which Playwright's click waits on).
  await pages.first.bringToFront();
});

const { first, second } = pages;

await step('an empty title shows the server’s message next to the field', async () => {
  const input = first.getByLabel('Title', { exact: true });
  await input.fill('   ');
  await input.press('Enter');
  const error = first.locator('.panel .field-error');
  await error.waitFor({ timeout: TIMEOUT });
  const message = await error.textContent();
  if (!/title/i.test(message)) throw new Error(`unexpected error text ${JSON.stringify(message)}`);
  if ((await input.getAttribute('aria-invalid')) !== 'true') throw new Error('the title input is not marked invalid');
  const describedBy = (await input.getAttribute('aria-describedby')) ?? '';
  if (!describedBy.split(' ').includes(await error.getAttribute('id'))) {
    throw new Error('the error is not tied to the input (aria-describedby)');
  }
});

await step('create a post from the keyboard', async () => {
  const input = first.getByLabel('Title', { exact: true });
  await input.fill(title);
  await input.press('Enter');
  await first.getByRole('article', { name: title, exact: true }).waitFor({ timeout: TIMEOUT });
  await waitInPage(first, 'the title input was not cleared', () => document.querySelector('input[name=title]')?.value === '');
});

await step('the post appears in the second page without a reload', async () => {
  await second.getByRole('article', { name: title, exact: true }).waitFor({ timeout: TIMEOUT });
  await assertNotReloaded(second, 'the second page');
});

await step('an approved comment goes from "Awaiting moderation" to its content, live', async () => {
  const post = first.getByRole('article', { name: title, exact: true });
  const input = post.getByLabel('Add a comment');
  await input.fill(approvedText);
  await input.press('Enter');
  await waitForComment(first, 'first page', title, 0, approvedText);
  expectLiveTransition(await commentHistory(first, title, 0), approvedText, 'first page');
});

await step('an "orange" comment goes from "Awaiting moderation" to rejected, live', async () => {
  const post = first.getByRole('article', { name: title, exact: true });
  await post.getByLabel('Add a comment').fill(rejectedText);
  await post.getByRole('button', { name: 'Comment' }).click();
  await waitForComment(first, 'first page', title, 1, REJECTED);
  expectLiveTransition(await commentHistory(first, title, 1), REJECTED, 'first page');
  if (await post.getByText(rejectedText).count()) throw new Error('the rejected content is still shown');
  await assertNotReloaded(first, 'the first page');
});

await step('the second page shows both moderation results without a reload', async () => {
  await waitForComment(second, 'second page', title, 0, approvedText);
  await waitForComment(second, 'second page', title, 1, REJECTED);
  for (const [index, final] of [
    [0, approvedText],
    [1, REJECTED],
  ]) {
    // The second page only hears of these comments through the stream.
    expectLiveTransition(await commentHistory(second, title, index), final, 'second page');
  }
  await assertNotReloaded(second, 'the second page');
});

await step('after the stream drops, the second page reconnects and catches up', async () => {
  // Refuse the reconnection attempts for a while, then drop the open stream the way the
  // browser reports a lost connection (an `error` event): the app must back off, retry,
  // and on the new stream's `ready` reload the view to pick up what it missed.
  let refused = 0;
  const refuse = (route) => {
    refused += 1;
    return route.abort('connectionrefused');
  };
  await second.route('**/posts/stream', refuse);
  await second.evaluate(() => window.__dropStream());
  await waitInPage(second, 'the second page never noticed the stream dropped', () =>
    document.querySelector('.connection--reconnecting'),
  );
  // Created while the second page is cut off: it can only learn of it by reloading the view.
  const response = await fetch(`${BASE}/posts/create`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ title: secondTitle }),
  });
  if (response.status !== 201) throw new Error(`POST /posts/create answered HTTP ${response.status}`);
  await first.getByRole('article', { name: secondTitle, exact: true }).waitFor({ timeout: TIMEOUT });
  const deadline = Date.now() + TIMEOUT;
  while (refused === 0) {
    if (Date.now() > deadline) throw new Error('the second page never tried to reconnect');
    await second.waitForEvent('requestfailed', { timeout: TIMEOUT });
  }
  await second.unroute('**/posts/stream', refuse);
  await waitInPage(second, 'the second page did not reconnect', () => document.querySelector('.connection--live'));
  await second.getByRole('article', { name: secondTitle, exact: true }).waitFor({ timeout: TIMEOUT });
  await assertNotReloaded(second, 'the second page');
});

await step('save screenshots', async () => {
  for (const [page, file] of [
    [first, 'first-page.png'],
    [second, 'second-page.png'],
  ]) {
    await page.bringToFront();
    await page.mouse.move(0, 0);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: join(ARTIFACTS, file) });
  }
  console.log(`  ${join(ARTIFACTS, 'first-page.png')}\n  ${join(ARTIFACTS, 'second-page.png')}`);
});

await step('the security policy was in force and nothing broke it', async () => {
  if (cspViolations.length > 0) throw new Error(`CSP violations:\n${cspViolations.join('\n')}`);
});

await browser.close();
clearTimeout(watchdog);
console.log('\nAll browser checks passed.');
