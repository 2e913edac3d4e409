// Browser test of the Portcullis web UI, run by tests/ui.rs (which starts the server,
// creates the admin, and pushes an image between the two phases):
//
//   node tests/ui/e2e.mjs before-push|after-push
//
// Environment: UI_URL (the server), UI_ADMIN_USER and UI_ADMIN_PASSWORD, UI_STATE (a
// JSON file the phases hand on: the users made and the CI token), UI_SCREENSHOTS (a
// directory for PNGs), UI_CHROMIUM (Debian's chromium; no browser is downloaded).
//
// Every page visited is checked with axe-core (violations of impact serious or
// critical fail the run, all are printed), for Content-Security-Policy violations and
// script errors, and photographed.

import { chromium } from "playwright-core";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";

const require = createRequire(import.meta.url);
const AXE_SOURCE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

function setting(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set (tests/ui.rs sets it)`);
  }
  return value;
}

const BASE = setting("UI_URL");
const ADMIN = { name: setting("UI_ADMIN_USER"), password: setting("UI_ADMIN_PASSWORD") };
const STATE_FILE = setting("UI_STATE");
const SHOTS = setting("UI_SCREENSHOTS");
const CHROMIUM = setting("UI_CHROMIUM");

const ALICE = { name: "alice", password: "alice-password-1" };
const BOB = { name: "bob", password: "bob-password-1" };
const PHONE = { width: 375, height: 812 };
const DESKTOP = { width: 1280, height: 900 };

const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Problems that fail the run at its end, after every page has been looked at. */
const problems = [];

function check(condition, message) {
  if (!condition) {
    throw new Error(`check failed: ${message}`);
  }
}

function step(text) {
  console.log(`- ${text}`);
}

/** A fresh browser profile each phase; the page watches for CSP violations and errors. */
async function openBrowser() {
  const profile = mkdtempSync(join(tmpdir(), "portcullis-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: DESKTOP,
  });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: BASE });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(10000);
  page.on("console", (message) => {
    const text = message.text();
    if (message.type() === "error" && /Content Security Policy|Refused to/.test(text)) {
      problems.push(`CSP on ${page.url()}: ${text}`);
    }
  });
  page.on("pageerror", (error) => problems.push(`script error on ${page.url()}: ${error}`));
  page.on("response", (response) => {
    const url = response.url();
    if (url.includes("/ui/assets/") && response.status() !== 200) {
      problems.push(`asset ${url} answered ${response.status()}`);
    }
  });
  return {
    context,
    page,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Runs axe-core on the page; prints every violation, keeps the serious ones. */
async function audit(page, name) {
  await page.evaluate(AXE_SOURCE);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  for (const violation of result.violations) {
    const where = violation.nodes.map((n) => n.target.join(" ")).join(", ");
    const line = `axe ${name}: [${violation.impact}] ${violation.id}: ${violation.help} at ${where}`;
    console.log(line);
    if (violation.impact === "serious" || violation.impact === "critical") {
      problems.push(line);
    }
  }
  return result.violations.length;
}

const audited = [];

/** Checks and photographs the page now shown, as `name`. */
async function look(page, name) {
  const count = await audit(page, name);
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  audited.push(`${name} (${count} axe findings)`);
}

/** Headers that sign in to the registry and REST API, which do not use the UI's session. */
function basicAuth(user) {
  return { Authorization: `Basic ${Buffer.from(`${user.name}:${user.password}`).toString("base64")}` };
}

async function heading(page) {
  return (await page.locator("h1").textContent()).trim();
}

/** Clicks something that submits a form or follows a link, and waits for the next page. */
async function follow(page, locator) {
  const [response] = await Promise.all([page.waitForNavigation(), locator.click()]);
  return response;
}

/** Tries to sign in; the answer, and the page's alert if there is one. */
async function trySignIn(page, name, password, next) {
  const url = next ? `${BASE}/ui/login?next=${encodeURIComponent(next)}` : `${BASE}/ui/login`;
  await page.goto(url);
  await page.getByLabel("User name").fill(name);
  await page.getByLabel("Password").fill(password);
  const response = await follow(page, page.getByRole("button", { name: "Sign in" }));
  const alert = page.getByRole("alert");
  return { response, alert: (await alert.count()) > 0 ? await alert.textContent() : "" };
}

async function signIn(page, user, { next } = {}) {
  const { response } = await trySignIn(page, user.name, user.password, next);
  check(response.status() === 200, `signing in as ${user.name} answered ${response.status()}`);
  check(
    (await page.locator(".who strong").textContent()) === user.name,
    `the header names ${user.name} after signing in`,
  );
}

async function signOut(page) {
  await follow(page, page.getByRole("button", { name: "Sign out" }));
  check(new URL(page.url()).pathname === "/ui/login", "signing out leads to the sign-in page");
}

// ---------------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------------

async function sessionsAndSafety(page, context) {
  step("signed out, / leads to the sign-in page and remembers where to go");
  const first = await page.goto(`${BASE}/`);
  check(new URL(page.url()).pathname === "/ui/login", `/ ends at ${page.url()}`);
  check(new URL(page.url()).searchParams.get("next") === "/ui/", "the sign-in page knows the way back");
  const headers = first.headers();
  check(/frame-ancestors 'none'/.test(headers["content-security-policy"] ?? ""), "CSP with frame-ancestors");
  check(!/unsafe-inline/.test(headers["content-security-policy"]), "no inline script or style allowed");
  check(headers["x-content-type-options"] === "nosniff", "nosniff");
  check(headers["referrer-policy"] === "same-origin", "referrer policy");
  await look(page, "sign-in");

  step("a wrong password is refused with 401 and a message");
  const wrong = await trySignIn(page, ADMIN.name, "not-the-password");
  check(wrong.response.status() === 401, `wrong password answered ${wrong.response.status()}`);
  check(wrong.alert.includes("Wrong user name or password"), "says why");

  step("sign in as the admin; the session cookie is HttpOnly and SameSite=Strict");
  await signIn(page, ADMIN);
  const cookie = (await context.cookies(BASE)).find((c) => c.name === "portcullis_session");
  check(cookie, "a portcullis_session cookie");
  check(cookie.httpOnly && cookie.sameSite === "Strict" && cookie.path === "/", "cookie flags");
  check(!cookie.secure, "not Secure over plain HTTP");

  step("a POST without the CSRF token, or from another site, is refused with 403");
  const withoutToken = await page.request.post(`${BASE}/ui/logout`, { form: { csrf: "guess" } });
  check(withoutToken.status() === 403, `a wrong CSRF token answered ${withoutToken.status()}`);
  const csrf = await page.locator('input[name="csrf"]').first().getAttribute("value");
  const crossSite = await page.request.post(`${BASE}/ui/logout`, {
    form: { csrf },
    headers: { Origin: "http://evil.example" },
  });
  check(crossSite.status() === 403, `a cross-site POST answered ${crossSite.status()}`);
  const assetUrl = await page.locator('link[rel="stylesheet"]').getAttribute("href");
  const asset = await page.request.get(`${BASE}${assetUrl}`);
  check(/immutable/.test(asset.headers()["cache-control"] ?? ""), "assets are cached for long");

  step("signing out ends the session on the server");
  await signOut(page);
  const replay = await page.request.get(`${BASE}/ui/`, {
    headers: { Cookie: `portcullis_session=${cookie.value}` },
    maxRedirects: 0,
  });
  check(replay.status() === 303, `the old session id still works (${replay.status()})`);
}

/** The page at `path`, checked and photographed as `name`. */
async function visit(page, path, name) {
  const response = await page.goto(`${BASE}${path}`);
  check(response.status() === 200, `${path} answered ${response.status()}`);
  await look(page, name);
}

/** The same page at phone size, photographed as `name`. */
async function onPhone(page, name) {
  await page.setViewportSize(PHONE);
  await look(page, name);
  // Wide tables scroll inside their box; the page itself must not scroll sideways.
  const overflow = await page.evaluate(() => {
    const wide = document.documentElement.scrollWidth;
    const sticking = [...document.querySelectorAll("body *")]
      .filter((e) => !e.parentElement.closest(".table-box") && e.getBoundingClientRect().right > window.innerWidth + 1)
      .map((e) => `${e.tagName.toLowerCase()}.${e.className}`);
    return { wide, sticking };
  });
  check(
    overflow.wide <= PHONE.width,
    `${name}: the page is ${overflow.wide} px wide at ${PHONE.width} px (${overflow.sticking.join(", ")})`,
  );
  await page.setViewportSize(DESKTOP);
}

async function notice(page) {
  return (await page.locator(".notice").allTextContents()).join(" ");
}

async function createUsers(page) {
  step("the admin creates alice and bob on the users page");
  await visit(page, "/ui/admin/users", "users");
  for (const user of [ALICE, BOB]) {
    await page.getByLabel("User name").fill(user.name);
    await page.getByLabel(/^Password/).fill(user.password);
    await follow(page, page.getByRole("button", { name: "Create user" }));
    check((await notice(page)).includes(`User ${user.name} created.`), `notice for ${user.name}`);
  }
  const rows = await page.locator("tbody th").allTextContents();
  check(rows.includes("alice") && rows.includes("bob"), `users listed: ${rows}`);
}

async function teamWork(page) {
  step("alice creates team web, adds bob as contributor, then makes him a viewer");
  await visit(page, "/ui/teams", "teams");
  await page.getByLabel("Name").fill("web");
  await page.getByLabel("Description").fill("The web site");
  await follow(page, page.getByRole("button", { name: "Create team" }));
  check(new URL(page.url()).pathname === "/ui/teams/web", `after creating: ${page.url()}`);
  await page.getByLabel("User name").fill(BOB.name);
  await page.getByLabel("Role", { exact: true }).selectOption("contributor");
  await follow(page, page.getByRole("button", { name: "Add member" }));
  check((await notice(page)).includes("bob is contributor of web now."), await notice(page));
  await page.getByLabel("Role of bob").selectOption("viewer");
  await follow(page, page.getByRole("button", { name: "Change role of bob" }));
  check((await notice(page)).includes("bob is viewer of web now."), await notice(page));
  await look(page, "team");
}

async function namespaceWork(page) {
  step("alice makes her namespace protected, creates a robot (secret shown once) and removes it");
  await visit(page, "/ui/namespaces", "namespaces");
  await follow(page, page.getByRole("link", { name: "alice", exact: true }));
  await page.getByLabel("Visibility").selectOption("protected");
  await follow(page, page.getByRole("button", { name: "Change visibility" }));
  check((await notice(page)).includes("alice is protected now."), await notice(page));
  await page.getByLabel("Name").fill("deploy");
  await follow(page, page.getByRole("button", { name: "Create robot" }));
  const secret = (await page.locator("#new-secret").textContent()).trim();
  check(secret.length >= 20, "the robot's secret is shown");
  await look(page, "namespace");
  await page.reload();
  check((await page.locator("#new-secret").count()) === 0, "the secret is not shown again");
  await follow(page, page.getByRole("button", { name: "Remove alice+deploy" }));
  check((await notice(page)).includes("Robot alice+deploy removed."), await notice(page));
}

async function tokenWork(page) {
  step("alice creates a CI token for her namespace and copies it with the copy button");
  await visit(page, "/ui/tokens", "tokens-empty");
  await page.getByLabel("Name").fill("ci");
  await page.getByLabel("alice", { exact: true }).check();
  await page.getByLabel("Push", { exact: true }).check();
  await page.getByLabel("Expires after").selectOption("30");
  await follow(page, page.getByRole("button", { name: "Create token" }));
  const token = (await page.locator("#new-secret").textContent()).trim();
  check(token.startsWith("pct_"), `a token is shown: ${token}`);
  await page.getByRole("button", { name: "Copy secret" }).click();
  await page.waitForFunction(() => document.getElementById("copy-status").textContent.includes("copied"));
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  check(copied === token, "the copy button put the token on the clipboard");
  const row = page.locator("tbody tr", { hasText: "ci" });
  check((await row.textContent()).includes("pull, push"), "the token is listed with its actions");
  await look(page, "tokens");
  await onPhone(page, "tokens-phone");
  return token;
}

async function beforePush() {
  const { page, context, close } = await openBrowser();
  const state = {};
  try {
    await sessionsAndSafety(page, context);
    await signIn(page, ADMIN);
    await createUsers(page);
    await signOut(page);
    step("alice signs in and lands on the page she asked for");
    await signIn(page, ALICE, { next: "/ui/teams" });
    check(new URL(page.url()).pathname === "/ui/teams", `next was followed: ${page.url()}`);
    await teamWork(page);
    await namespaceWork(page);
    const token = await tokenWork(page);
    state.push = { user: ALICE.name, token, target: "alice/app:1.0" };
  } finally {
    await close();
  }
  writeFileSync(STATE_FILE, JSON.stringify(state, null, 2));
}

async function repositoryWork(page, host) {
  step("alice finds the pushed repository, its tag, pull commands and manifest");
  await visit(page, "/ui/repositories?q=app", "repositories");
  await onPhone(page, "repositories-phone");
  await follow(page, page.getByRole("link", { name: "alice/app" }));
  check((await heading(page)) === "alice/app", "the repository page");
  const commands = await page.locator(".copyable code").allTextContents();
  check(commands.includes(`docker pull ${host}/alice/app:1.0`), `pull commands: ${commands}`);
  check(commands.includes(`podman pull --tls-verify=false ${host}/alice/app:1.0`), `podman: ${commands}`);
  await look(page, "repository");
  await onPhone(page, "repository-phone");
  await follow(page, page.locator("tbody td a.mono").first());
  check((await page.locator("caption").allTextContents()).includes("Layers"), "the manifest lists layers");
  await look(page, "manifest");

  step("alice deletes the tag after a confirmation page; it is gone");
  await page.goto(`${BASE}/ui/repositories/alice/app`);
  await follow(page, page.getByRole("link", { name: "Delete tag 1.0" }));
  await look(page, "delete-tag");
  await follow(page, page.getByRole("button", { name: "Delete tag 1.0" }));
  check((await notice(page)).includes("Tag 1.0 deleted."), await notice(page));
  check((await page.locator("main").textContent()).includes("This repository has no tags."), "no tags left");
  const tags = await page.request.get(`${BASE}/v2/alice/app/tags/list`, { headers: basicAuth(ALICE) });
  const listed = (await tags.json()).tags ?? [];
  check(!listed.includes("1.0"), `the registry still lists the tag: ${listed}`);
}

async function activityWork(page) {
  step("alice sees her push on the activity page, filtered, with the export link");
  const path = "/ui/activity?action=push&repository=alice%2Fapp";
  // The log commits in batches: give it a few seconds.
  let found = false;
  for (let i = 0; i < 20 && !found; i++) {
    await page.goto(`${BASE}${path}`);
    found = (await page.locator("tbody tr", { hasText: "alice/app" }).count()) > 0;
    if (!found) {
      await page.waitForTimeout(500);
    }
  }
  check(found, "the push of alice/app is on the activity page");
  const row = await page.locator("tbody tr", { hasText: "alice/app" }).first().textContent();
  check(row.includes("alice") && row.includes("push") && row.includes("1.0"), `the entry: ${row}`);
  check((await page.getByLabel("Action").inputValue()) === "push", "the form keeps the filter");
  const exportLink = await page.getByRole("link", { name: "These entries as JSON lines" }).getAttribute("href");
  check(exportLink.startsWith("/api/v1/activity?format=jsonl&") && exportLink.includes("action=push"), exportLink);
  const exported = await page.request.get(`${BASE}${exportLink}`, { headers: basicAuth(ALICE) });
  check(exported.status() === 200, `the export answered ${exported.status()}`);
  const lines = (await exported.text()).trim().split("\n").map((line) => JSON.parse(line));
  check(lines.some((e) => e.action === "push" && e.target === "alice/app"), "the export holds the push");
  await look(page, "activity");
}

async function signInLimits(page, token) {
  step("an application token does not sign in to the UI; repeated failures get 429");
  const withToken = await trySignIn(page, ALICE.name, token);
  check(withToken.response.status() === 403, `a token signing in answered ${withToken.response.status()}`);
  check(withToken.alert.includes("cannot sign in to the web UI"), withToken.alert);
  // Last, since it locks this address out for the failure window.
  let limited = null;
  for (let i = 0; i < 15 && !limited; i++) {
    const attempt = await trySignIn(page, "mallory", `guess-${i}`);
    if (attempt.response.status() === 429) {
      limited = attempt;
    } else {
      check(attempt.response.status() === 401, `a wrong password answered ${attempt.response.status()}`);
    }
  }
  check(limited, "no 429 after 15 failed sign-ins");
  check(Number(limited.response.headers()["retry-after"]) > 0, "429 says when to retry");
  check(limited.alert.includes("Too many failed sign-ins"), limited.alert);
  await look(page, "sign-in-limited");
}

async function afterPush() {
  const state = JSON.parse(readFileSync(STATE_FILE, "utf8"));
  check(state.push, "the first phase handed on a token");
  const { page, close } = await openBrowser();
  const host = new URL(BASE).host;
  try {
    await signIn(page, ALICE);
    await activityWork(page);
    await repositoryWork(page, host);
    await signOut(page);
    step("the admin sees the system page and runs a garbage collection");
    await signIn(page, ADMIN);
    await visit(page, "/ui/admin/system", "system");
    await follow(page, page.getByRole("button", { name: "Run garbage collection now" }));
    check((await notice(page)).includes("Garbage collection done"), await notice(page));
    await signOut(page);
    await signInLimits(page, state.push.token);
  } finally {
    await close();
  }
}

const phases = { "before-push": beforePush, "after-push": afterPush };
const phase = phases[process.argv[2]];
if (!phase) {
  console.error(`usage: node e2e.mjs ${Object.keys(phases).join("|")}`);
  process.exit(2);
}
try {
  await phase();
} catch (error) {
  problems.push(String(error.stack ?? error));
}
console.log(`pages checked: ${audited.join(", ")}`);
if (problems.length > 0) {
  console.error(`${problems.length} problem(s):\n${problems.join("\n")}`);
  process.exit(1);
}
console.log(`${process.argv[2]}: all checks passed`);
