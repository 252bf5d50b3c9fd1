-- The one defaults table of the plugin, the merge of user options into it, and the mapping of
-- those options onto the server's "exlsp" settings section (camelCase keys, see issue 3).
-- Pure: no editor state is read or changed here, so it is tested without a server.
local M = {}

---@class exlsp.Options
M.defaults = {
  -- Server command (list of strings). nil: `exlsp serve` from PATH (the active virtualenv
  -- first), else `python3 -m exlsp.cli serve`.
  cmd = nil,
  -- Model store name or checkpoint folder. nil: the server's default model.
  model = nil,
  -- "cuda", "cpu" or nil (the server picks: CUDA when present).
  device = nil,
  -- Filetypes the server attaches to. nil: every file buffer.
  filetypes = nil,
  -- Per filetype (LSP language id) switch, e.g. { markdown = false }; "*" sets the default.
  enable = {},
  -- Server settings below: nil keeps the server's own default (in parentheses).
  -- Wall-clock budget of one completion, in milliseconds (2000).
  time_budget_ms = nil,
  -- Most new tokens in one inline completion (64).
  max_tokens = nil,
  -- Most new tokens in a chat answer or code action (512).
  chat_max_tokens = nil,
  -- Server-side debounce: a request waits this long and a newer one wins, milliseconds (30).
  server_debounce_ms = nil,
  -- Prompt budgets in tokens: text before the cursor (1024), after it (256), other files (512).
  prefix_tokens = nil,
  suffix_tokens = nil,
  extra_context_tokens = nil,
  -- Sampling temperature; 0 is greedy (0).
  temperature = nil,
  -- LSP message trace the server writes to its log: "off", "messages" or "verbose".
  trace = "off",
  -- Request a suggestion automatically while typing in insert mode.
  auto_trigger = true,
  -- Client-side pause after the last keystroke before a request is sent, in milliseconds.
  debounce_ms = 75,
  -- Use Neovim's built-in vim.lsp.inline_completion (0.12+) instead of the plugin's own client.
  builtin_inline_completion = true,
  -- Insert-mode keys; set one to false to leave it unmapped. None takes <Tab> unless you ask.
  keymaps = {
    accept = "<M-l>",
    accept_word = "<M-Right>",
    accept_line = "<M-C-Right>",
    next = "<M-]>",
    prev = "<M-[>",
    dismiss = "<C-]>",
  },
  -- Chat output window: "vsplit", "split" or "tab".
  chat_window = "vsplit",
}

---@param opts table|nil
---@return exlsp.Options
function M.merge(opts)
  vim.validate("opts", opts, "table", true)
  local merged = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  vim.validate("debounce_ms", merged.debounce_ms, "number")
  vim.validate("enable", merged.enable, "table")
  vim.validate("keymaps", merged.keymaps, "table")
  for option in pairs(M.setting_keys) do
    vim.validate(option, merged[option], { "number", "string" }, true)
  end
  return merged
end

-- Plugin option -> key of the server's "exlsp" settings section.
M.setting_keys = {
  model = "model",
  device = "device",
  time_budget_ms = "timeBudgetMs",
  max_tokens = "maxTokens",
  chat_max_tokens = "chatMaxTokens",
  server_debounce_ms = "debounceMs",
  prefix_tokens = "prefixTokens",
  suffix_tokens = "suffixTokens",
  extra_context_tokens = "extraContextTokens",
  temperature = "temperature",
}

--- The server's settings section, sent as initializationOptions and as settings.exlsp
--- (the answer to workspace/configuration). Options left nil are absent, so the server keeps its
--- default for them.
---@param options exlsp.Options
---@return table
function M.server_settings(options)
  local settings = vim.empty_dict()
  for option, key in pairs(M.setting_keys) do
    if options[option] ~= nil then
      settings[key] = options[option]
    end
  end
  if next(options.enable) then
    settings.enable = vim.deepcopy(options.enable)
  end
  return settings
end

--- Whether suggestions are wanted for a filetype under these options.
---@param options exlsp.Options
---@param filetype string
function M.enabled_for(options, filetype)
  local value = options.enable[filetype]
  if value == nil then
    value = options.enable["*"]
  end
  return value ~= false
end

return M
