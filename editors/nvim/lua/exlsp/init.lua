-- exlsp for Neovim: `require("exlsp").setup(opts)` starts the exlsp language server for file
-- buffers and wires inline suggestions, keys, :ExlspChat, :ExlspStatus and :ExlspToggle.
-- Options and their defaults: lua/exlsp/config.lua and :help exlsp-config.
local config = require("exlsp.config")

local M = {}

---@type exlsp.Options|nil
M.options = nil

--- The completion client in use: the built-in one on 0.12+, else the plugin's own.
function M.completion()
  if M.options and M.options.builtin_inline_completion and vim.lsp.inline_completion then
    return require("exlsp.builtin")
  end
  return require("exlsp.inline")
end

---@param opts exlsp.Options|table|nil
function M.setup(opts)
  M.options = config.merge(opts)
  local completion = M.completion()
  completion.setup(M.options)
  require("exlsp.keymaps").setup(M.options.keymaps, completion)
  require("exlsp.status").setup()
  require("exlsp.server").start(M.options, function() end)
end

function M.accept()
  return M.completion().accept()
end

function M.accept_word()
  return M.completion().accept_word()
end

function M.accept_line()
  return M.completion().accept_line()
end

function M.dismiss()
  return M.completion().dismiss()
end

--- Turns automatic suggestions on or off (nil: flip) and tells the user.
---@param value boolean|nil
function M.toggle(value)
  local completion = M.completion()
  if value == nil then
    value = not completion.is_enabled()
  end
  completion.set_enabled(value)
  vim.notify("exlsp: completions " .. (value and "on" or "off"), vim.log.levels.INFO)
end

---@param message string
---@param bufnr integer
---@param lines integer[]|nil first and last line (1-based) of a selection to ask about
function M.chat(message, bufnr, lines)
  local window = M.options and M.options.chat_window or config.defaults.chat_window
  require("exlsp.chat").send(
    { message = message, bufnr = bufnr or vim.api.nvim_get_current_buf(), lines = lines },
    window
  )
end

function M.status()
  require("exlsp.status").show()
end

--- For a statusline: "exlsp", "exlsp: loading model 40%", or "" without a server.
function M.statusline()
  return require("exlsp.status").statusline()
end

return M
