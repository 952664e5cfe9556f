"""Arguments for ``gr.mount_gradio_app``: login (--gradio-auth / --gradio-auth-path), theme, CSS and page scripts."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from modules.errors import SettingsError

if TYPE_CHECKING:
    from modules.context import AppContext

logger = logging.getLogger(__name__)

# Local font stacks only: the default theme would fetch Google fonts, and the UI must work offline.
_FONTS = ("ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif")
_MONO_FONTS = ("ui-monospace", "Consolas", "Menlo", "monospace")

CSS = """
#quicksettings { align-items: flex-end; gap: 0.5em; }
#quicksettings > .form { flex-grow: 0 !important; }
#setting_sd_model_checkpoint { flex-grow: 1 !important; }
#quicksettings .tool-button, .tool-button { max-width: 2.6em; min-width: 2.6em !important; height: 2.4em;
  align-self: end; padding: 0 !important; }
#no_checkpoint_notice .notice { border: 1px solid var(--color-accent); border-radius: 8px; padding: 0.6em 1em;
  background: var(--background-fill-secondary); }
.prompt-box { position: relative; }
#txt2img_token_counter, #txt2img_negative_token_counter, #img2img_token_counter, #img2img_negative_token_counter {
  position: absolute; right: 0.8em; top: 0.4em;
  z-index: 5; width: auto !important; min-width: 0 !important; opacity: 0.7; font-size: 0.85em; }
#txt2img_actions_column, #img2img_actions_column { gap: 0.5em; min-width: 16em !important; }
#txt2img_generate, #img2img_generate { min-height: 5.5em; font-size: 1.1em; }
#txt2img_interrupt, #txt2img_skip, #img2img_interrupt, #img2img_skip { min-height: 2.4em; }
#txt2img_progress .progress-track, #img2img_progress .progress-track { height: 1.4em; border-radius: 6px;
  background: var(--background-fill-secondary); overflow: hidden; position: relative; }
#txt2img_progress .progress-bar, #img2img_progress .progress-bar { height: 100%; background: var(--color-accent);
  transition: width 0.25s; }
#txt2img_progress .progress-text, #img2img_progress .progress-text { position: absolute; inset: 0;
  text-align: center; font-size: 0.85em; line-height: 1.4em; }
#txt2img_progress .livePreview img, #img2img_progress .livePreview img { display: block; margin: 0.5em auto 0;
  width: 100%; max-width: 512px; height: auto; border-radius: 6px; }
#generate_context_menu { position: absolute; z-index: 1000; background: var(--background-fill-primary);
  border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 0.2em 0;
  box-shadow: var(--shadow-drop-lg); }
#generate_context_menu .context-menu-item { padding: 0.3em 1em; cursor: pointer; }
#generate_context_menu .context-menu-item:hover { background: var(--background-fill-secondary); }
#html_info_txt2img .performance, #html_info_img2img .performance { opacity: 0.7; font-size: 0.85em; }
#html_info_txt2img p, #html_info_img2img p, #pnginfo_html p { word-break: break-word; }
"""

# Hover titles of the icon buttons, by elem_id suffix (the same on every generation tab).
TOOLTIPS: dict[str, str] = {
    "_paste": "Read generation parameters from prompt or last generation if prompt is empty into user interface.",
    "_clear_prompt": "Clear prompt",
    "_random_seed": "Set seed to -1, which will cause a new random number to be used every time",
    "_reuse_seed": "Reuse seed from last generation, mostly useful if it was randomized",
    "_random_subseed": "Set variation seed to -1",
    "_reuse_subseed": "Reuse variation seed from last generation",
    "_res_switch_btn": "Switch width/height",
    "_styles_edit_button": "Edit styles",
    "_style_apply": "Apply all selected styles to prompts",
    "refresh_sd_model_checkpoint": "Refresh the checkpoint list",
}

# A1111's page behaviour: Ctrl+Enter in a prompt box clicks Generate, Alt+Enter Skip, Esc interrupts; icon buttons
# get hover titles; the running job's percentage leads the window title; right-click on Generate offers "Generate
# forever" (Generate is clicked again each time a job's progress bar goes away, until cancelled there, or until a
# click starts nothing for 15 s: an error).
JS = """
() => {
  const tips = __TOOLTIPS__;
  const setTitles = () => {
    for (const [suffix, text] of Object.entries(tips)) {
      document.querySelectorAll(`[id$="${suffix}"]`).forEach((el) => { el.title = text; });
    }
  };
  setTitles();
  setTimeout(setTitles, 1500);
  document.addEventListener('keydown', (e) => {
    const tab = ['txt2img', 'img2img'].find((t) => e.target.closest && e.target.closest(
      `#${t}_prompt, #${t}_neg_prompt`));
    if (tab && e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      document.querySelector(`#${tab}_generate`)?.click();
    } else if (tab && e.key === 'Enter' && e.altKey) {
      e.preventDefault();
      document.querySelector(`#${tab}_skip`)?.click();
    } else if (e.key === 'Escape') {
      const visible = [...document.querySelectorAll('#txt2img_interrupt, #img2img_interrupt')]
        .find((b) => b.offsetParent !== null);
      visible?.click();
    }
  });
  const baseTitle = document.title;
  const busy = (tab) => document.querySelector(`#${tab}_progress .progress-track`);
  setInterval(() => {
    const bar = busy('txt2img') || busy('img2img');
    const title = bar ? `[${bar.getAttribute('aria-valuenow')}%] ${baseTitle}` : baseTitle;
    if (document.title !== title) document.title = title;
  }, 500);
  const forever = {};
  const menu = document.createElement('div');
  menu.id = 'generate_context_menu';
  menu.className = 'context-menu';
  menu.style.display = 'none';
  document.body.appendChild(menu);
  document.addEventListener('click', (e) => { if (!menu.contains(e.target)) menu.style.display = 'none'; });
  document.addEventListener('contextmenu', (e) => {
    const button = e.target.closest && e.target.closest('#txt2img_generate, #img2img_generate');
    if (!button) { menu.style.display = 'none'; return; }
    e.preventDefault();
    const tab = button.id.replace('_generate', '');
    const item = document.createElement('div');
    item.className = 'context-menu-item';
    item.textContent = forever[tab] ? 'Cancel generate forever' : 'Generate forever';
    item.onclick = () => {
      menu.style.display = 'none';
      if (forever[tab]) { forever[tab].observer.disconnect(); delete forever[tab]; return; }
      const run = { state: 'idle', since: Date.now(), saw: false };
      run.observer = new MutationObserver(() => { if (busy(tab)) run.saw = true; });  // catches short jobs too
      const progress = document.querySelector(`#${tab}_progress`);
      if (progress) run.observer.observe(progress, { childList: true, subtree: true });
      forever[tab] = run;
    };
    menu.replaceChildren(item);
    menu.style.left = `${e.pageX}px`;
    menu.style.top = `${e.pageY}px`;
    menu.style.display = 'block';
  });
  setInterval(() => {
    for (const [tab, run] of Object.entries(forever)) {
      if (run.state === 'idle') {
        Object.assign(run, { state: 'waiting', since: Date.now(), saw: false });
        document.querySelector(`#${tab}_generate`)?.click();
      } else if (run.state === 'waiting' && (run.saw || busy(tab))) {
        run.state = 'running';
      } else if (run.state === 'running' && !busy(tab)) {
        run.state = 'idle';  // the job's result arrived: the next tick generates again
      } else if (run.state === 'waiting' && Date.now() - run.since > 15000) {
        run.observer.disconnect();
        delete forever[tab];
      }
    }
  }, 300);
}
"""

_THEME_JS = """
() => {
  const url = new URL(window.location);
  if (!url.searchParams.has('__theme')) {
    url.searchParams.set('__theme', '%s');
    window.location.replace(url.href);
  }
}
"""


def parse_auth(spec: str | None, path: Path | str | None = None) -> list[tuple[str, str]]:
    """Parse ``user:password`` pairs from ``--gradio-auth`` and the lines of ``--gradio-auth-path``.

    Pairs are separated by commas (and newlines in the file); each splits on its first ``:`` so passwords may
    contain colons.

    Raises:
        SettingsError: If a pair has no ``:``, or the file cannot be read.
    """
    texts = [spec or ""]
    if path:
        try:
            texts.append(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"--gradio-auth-path: cannot read {path}: {exc}") from exc
    pairs: list[tuple[str, str]] = []
    for text in texts:
        for item in text.replace("\n", ",").split(","):
            item = item.strip()
            if not item:
                continue
            if ":" not in item:
                raise SettingsError(f"Gradio login {item!r} must have the form user:password")
            user, password = item.split(":", 1)
            pairs.append((user, password))
    return pairs


def make_theme() -> gr.themes.Base:
    """A1111-like default theme (orange primary buttons) with local fonts only."""
    return gr.themes.Default(primary_hue="orange", font=list(_FONTS), font_mono=list(_MONO_FONTS))


def ui_launch_kwargs(ctx: AppContext) -> dict[str, Any]:
    """Keyword arguments for ``gr.mount_gradio_app``: auth (if any logins), theme, css and js."""
    flags = ctx.flags
    js = JS.replace("__TOOLTIPS__", json.dumps(TOOLTIPS))
    if flags.theme in ("light", "dark"):
        js = f"() => {{ ({_THEME_JS % flags.theme})(); ({js})(); }}"
    kwargs: dict[str, Any] = {
        "theme": make_theme(),
        "css": CSS,
        "js": js,
        "footer_links": ["api", "gradio", "settings"],
    }
    logins = parse_auth(flags.gradio_auth, flags.gradio_auth_path)
    if logins:
        kwargs["auth"] = logins
        logger.info("UI login required (%d user(s))", len(logins))
    return kwargs
